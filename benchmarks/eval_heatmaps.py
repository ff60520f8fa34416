"""Pointing game for the heatmaps on held-out multi-object shapes images.

For every object word of a caption (a colour or kind word that names exactly
one object in that caption: it occurs once in the caption and is one of that
object's ground-truth words), the word's stored map (mapped back onto the
image, as the App shows it) counts as a hit when its peak falls inside that
object's ground-truth box.

    python benchmarks/eval_heatmaps.py                          # both modes, defaults
    python benchmarks/eval_heatmaps.py --split validation --mode cross-attention --heads 0,1

Cross-attention explains the caption the bundled captioner generated
(`--text generated`, the default for that mode); gradcam explains the
ground-truth caption (`--text gt`). Images: the first `--count` scenes of the
split that hold 2 or 3 objects. The bundled shapes-tiny models are used as
they are (never retrained here).
"""

from __future__ import annotations

import argparse
import json
import os
import time

os.environ.setdefault("FIFTYONE_DATABASE_VALIDATION", "false")
os.environ.setdefault("FIFTYONE_DO_NOT_TRACK", "true")
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def object_words(caption: str, detections) -> list[tuple[str, object]]:
    """(word, detection) pairs: words that name exactly one object of the caption."""
    words = caption.replace(",", " ").split()
    pairs = []
    for detection in detections:
        for word in detection["words"]:
            if words.count(word) == 1:
                pairs.append((word, detection))
    return pairs


def pointing_game(samples, field: str) -> dict:
    from fiftyone_blip.word_heatmaps import peak, word_maps

    hits = total = 0
    by_kind = {"colour": [0, 0], "kind": [0, 0]}
    for sample in samples.iter_samples():
        text = sample[f"{field}_text"]
        words, maps, _ = word_maps(sample, field)
        width, height = sample.metadata.width, sample.metadata.height
        for word, detection in object_words(text, sample.gt_objects.detections):
            index = words.index(word)
            x, y = peak(maps[index], width, height)
            bx, by, bw, bh = detection.bounding_box
            hit = bx * width <= x <= (bx + bw) * width and by * height <= y <= (by + bh) * height
            kind = "colour" if word == detection["colour"] else "kind"
            by_kind[kind][0] += hit
            by_kind[kind][1] += 1
            hits += hit
            total += 1
    return {
        "pointing": hits / total if total else float("nan"),
        "words": total,
        "colour_words": by_kind["colour"][0] / max(by_kind["colour"][1], 1),
        "kind_words": by_kind["kind"][0] / max(by_kind["kind"][1], 1),
    }


# Aggregation choices tried on the validation split (`--sweep`); the chosen
# setting is then measured once on the test split.
SWEEP = [
    dict(mode="cross-attention", layers="all", heads="all", token_positions="both"),
    dict(mode="cross-attention", layers="all", heads="all", token_positions="reading"),
    dict(mode="cross-attention", layers="all", heads="all", token_positions="predicting"),
    dict(mode="cross-attention", layers="last", heads="all", token_positions="both"),
    dict(mode="cross-attention", layers="0", heads="all", token_positions="both"),
    dict(mode="cross-attention", layers="all", heads="0,1", token_positions="both"),
    dict(mode="cross-attention", layers="all", heads="all", token_positions="both", text="gt"),
    dict(mode="cross-attention", layers="all", heads="all", token_positions="both", normalize_heads=True),
    dict(mode="cross-attention", layers="all", heads="0,1", token_positions="both", normalize_heads=True),
    dict(mode="gradcam", layers=None, heads="all"),
    dict(mode="gradcam", layers=None, heads="0"),
    dict(mode="gradcam", layers=None, heads="all", text="generated"),
]


def evaluate(dataset, variant: dict, resize: str, exact: float, split: str, as_json: bool) -> dict:
    import fiftyone_blip as fob

    mode = variant["mode"]
    text = variant.get("text") or ("generated" if mode == "cross-attention" else "gt")
    layers = variant.get("layers")
    if layers not in (None, "all", "last"):
        layers = [int(v) for v in layers.split(",")]
    heads = variant.get("heads", "all")
    heads = heads if heads == "all" else [int(v) for v in heads.split(",")]
    positions = variant.get("token_positions", "both")
    started = time.perf_counter()
    summary = fob.heatmaps(
        dataset,
        mode=mode,
        model="shapes-tiny",
        field="hm",
        text_field="caption" if text == "generated" else "gt_caption",
        layers=layers,
        heads=heads,
        token_positions=positions,
        normalize_heads=variant.get("normalize_heads", False),
        resize=resize,
        overwrite=True,
        progress=False,
    )
    seconds = time.perf_counter() - started
    result = {
        "split": split,
        "images": len(dataset),
        "mode": mode,
        "text": text,
        "layers": variant.get("layers"),
        "heads": variant.get("heads", "all"),
        "token_positions": positions if mode == "cross-attention" else None,
        "normalize_heads": variant.get("normalize_heads", False),
        "resize": resize,
        **pointing_game(dataset, "hm"),
        "caption_exact_match": round(exact, 3),
        "seconds": round(seconds, 1),
        "failed": summary.failed,
    }
    if as_json:
        print(json.dumps(result), flush=True)
    else:
        print(
            f"{mode:<16} text={text:<9} layers={result['layers']} heads={result['heads']} "
            f"positions={result['token_positions']} normalize_heads={result['normalize_heads']} "
            f"resize={resize}: pointing {result['pointing']:.3f} "
            f"over {result['words']} object words (colour {result['colour_words']:.3f}, "
            f"kind {result['kind_words']:.3f}); {len(dataset)} images, {seconds:.1f} s",
            flush=True,
        )
    return result


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--split", default="test", choices=["test", "validation"])
    parser.add_argument("--count", type=int, default=200, help="images with 2-3 objects")
    parser.add_argument("--seed", type=int, default=0, help="shapes generator seed; 0 is the training seed (0)")
    parser.add_argument("--mode", action="append", choices=["cross-attention", "gradcam"])
    parser.add_argument(
        "--text",
        choices=["generated", "gt"],
        default=None,
        help="[default: generated for cross-attention, gt for gradcam]",
    )
    parser.add_argument("--layers", default=None, help="'all', 'last' or indices like 0,1")
    parser.add_argument("--heads", default="all", help="'all' or indices like 0,1")
    parser.add_argument("--token-positions", default="both", choices=["both", "reading", "predicting"])
    parser.add_argument("--normalize-heads", action="store_true")
    parser.add_argument("--resize", default="squash", choices=["squash", "center-crop", "letterbox"])
    parser.add_argument("--sweep", action="store_true", help="run the aggregation choices in SWEEP instead")
    parser.add_argument("--json", action="store_true", help="print one JSON line per setting")
    args = parser.parse_args()

    from fiftyone import ViewField as F

    import fiftyone_blip as fob

    name = f"eval-heatmaps-{args.split}-{args.count}-seed{args.seed}"
    base = fob.load_shapes_dataset(name, count=args.count * 2, split=args.split, seed=args.seed)
    base.compute_metadata()
    view = base.match(F("gt_objects.detections").length() >= 2).limit(args.count)
    dataset = view.clone()
    try:
        fob.caption(dataset, model="shapes-tiny", progress=False)
        exact = sum(a == b for a, b in zip(*dataset.values(["caption", "gt_caption"]))) / len(dataset)
        variants = (
            SWEEP
            if args.sweep
            else [
                dict(
                    mode=mode,
                    text=args.text,
                    layers=args.layers,
                    heads=args.heads,
                    token_positions=args.token_positions,
                    normalize_heads=args.normalize_heads,
                )
                for mode in args.mode or ["cross-attention", "gradcam"]
            ]
        )
        for variant in variants:
            evaluate(dataset, variant, args.resize, exact, args.split, args.json)
    finally:
        dataset.delete()


if __name__ == "__main__":
    main()
