"""Object-level quality on held-out shapes: caption, text search and VQA of each object's crop.

    .venv/bin/python benchmarks/eval_patches.py --seed 7                  # 300 test images, an unseen seed
    .venv/bin/python benchmarks/eval_patches.py --seed 7 --contexts 1 2 3

Builds (or reuses) a FiftyOne dataset of `--count` images of the shapes `test`
split (never seen in training) made with generator seed `--seed` (the models
were trained on seed 0), and runs the library on its patches view
`dataset.to_patches("gt_objects")`, once per context margin (`--contexts`):
each object's box, grown by that factor, is cropped and fitted like an image.

- **Caption exact match**: the object's phrase is `a {colour} {kind}` (its
  `colour` attribute and its label). A crop's caption matches when the first
  colour word and the first shape word it names are the object's colour and
  kind: the caption names that object first. (The captioner writes scene
  captions, "a red circle at the top and ...": its first object is compared;
  a whole-caption string match could never hold, the object's phrase having
  no position.) Colour and kind accuracy are reported apart too.
- **Object text search P@10**: `embed` builds a patches similarity index
  (`patches_field="gt_objects"`); every query `a {colour} {kind}` with at least
  10 such objects ranks the patches through the App's own path
  (`patches.sort_by_similarity(query, k=10)`); P@10 is the share of the 10
  boxes that are such an object, averaged over queries.
- **Per-object VQA accuracy**: the objects of each kind are asked "what
  colour is the {kind}?" with the colours as candidate answers (a question
  type the VQA model was trained on, about whole scenes); the answer is right
  when it is the object's colour.

The bundled shapes-tiny models were trained on whole 96 px scenes, so a crop is
out of their distribution: the figures say how far they carry. Prints a table
and one JSON line.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import re
import time

os.environ.setdefault("FIFTYONE_DATABASE_VALIDATION", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def first_words(caption: str, colours, kinds) -> tuple[str | None, str | None]:
    """The first colour word and the first shape word of a caption (None where it names none)."""
    words = re.findall(r"[a-z]+", (caption or "").lower())
    colour = next((w for w in words if w in colours), None)
    kind = next((w for w in words if w in kinds or w.rstrip("s") in kinds), None)
    return colour, kind.rstrip("s") if kind and kind not in kinds else kind


def caption_scores(patches, field: str, colours, kinds) -> dict:
    """Exact match, colour and kind accuracy of the crops' captions against their objects."""
    labels, object_colours, captions = patches.values(["gt_objects.label", "gt_objects.colour", f"gt_objects.{field}"])
    exact = colour_ok = kind_ok = 0
    for kind, colour, caption in zip(labels, object_colours, captions):
        said_colour, said_kind = first_words(caption, colours, kinds)
        colour_ok += said_colour == colour
        kind_ok += said_kind == kind
        exact += said_colour == colour and said_kind == kind
    n = len(labels)
    return {"exact_match": exact / n, "colour": colour_ok / n, "kind": kind_ok / n, "objects": n}


def search_precision(patches, brain_key: str, colours, kinds, k: int, min_relevant: int) -> dict:
    """P@k of `a {colour} {kind}` queries over the patches index, through `sort_by_similarity`."""
    from fiftyone import ViewField as F

    per_query = {}
    for colour, kind in itertools.product(colours, kinds):
        relevant = set(patches.match((F("gt_objects.label") == kind) & (F("gt_objects.colour") == colour)).values("id"))
        if len(relevant) < min_relevant:
            continue
        found = patches.sort_by_similarity(f"a {colour} {kind}", k=k, brain_key=brain_key).values("id")
        per_query[f"a {colour} {kind}"] = sum(i in relevant for i in found) / k
    return {"p_at_k": sum(per_query.values()) / max(len(per_query), 1), "queries": len(per_query)}


def vqa_accuracy(fiftyone_blip, patches, field: str, context: float, colours, kinds, model: str) -> float:
    """Share of objects whose crop's answer to "what colour is the {kind}?" is the object's colour."""
    from fiftyone import ViewField as F

    right = total = 0
    for kind in kinds:
        view = patches.match(F("gt_objects.label") == kind)
        if not len(view):
            continue
        fiftyone_blip.ask(
            view,
            f"what colour is the {kind}?",
            field,
            answers=[list(colours)],
            model=model,
            context=context,
            overwrite=True,  # measured afresh: an earlier run's answers (other code, other model) never count
            progress=False,
        )
        truths, answers = view.values(["gt_objects.colour", f"gt_objects.{field}.label"])
        right += sum(t == a for t, a in zip(truths, answers))
        total += len(truths)
    return right / total


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--count", type=int, default=300, help="held-out test images (300)")
    parser.add_argument("--seed", type=int, default=7, help="shapes generator seed; 0 is the training seed (7)")
    parser.add_argument("--contexts", type=float, nargs="+", default=[1.0, 1.5, 2.0, 3.0], help="box growth factors")
    parser.add_argument("--model", default="shapes-tiny")
    parser.add_argument("--dataset", default="eval-patches", help="FiftyOne dataset name (eval-patches)")
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--min-relevant", type=int, default=10, help="skip queries with fewer relevant objects")
    args = parser.parse_args(argv)

    import fiftyone_blip
    from fiftyone_blip.shapes import data as shapes

    colours, kinds = sorted(shapes.COLOURS), list(shapes.KINDS)
    name = f"{args.dataset}-seed{args.seed}"
    dataset = fiftyone_blip.load_shapes_dataset(name, count=args.count, split="test", seed=args.seed)
    patches = dataset.to_patches("gt_objects")
    report = {"count": len(dataset), "objects": len(patches), "split": "test", "seed": args.seed, "model": args.model}
    report["contexts"] = {}
    for context in args.contexts:
        tag = f"c{int(round(context * 10))}"
        t0 = time.time()
        # every figure is measured afresh (overwrite): a field an earlier run wrote never counts
        fiftyone_blip.caption(
            patches, model=args.model, field=f"cap_{tag}", context=context, overwrite=True, progress=False
        )
        captions = caption_scores(dataset.to_patches("gt_objects"), f"cap_{tag}", colours, kinds)
        fiftyone_blip.embed(
            patches,
            model=args.model,
            field=f"emb_{tag}",
            brain_key=f"obj_{tag}",
            context=context,
            overwrite=True,
            progress=False,
        )
        search = search_precision(
            dataset.to_patches("gt_objects"), f"obj_{tag}", colours, kinds, args.k, args.min_relevant
        )
        vqa = vqa_accuracy(
            fiftyone_blip, dataset.to_patches("gt_objects"), f"vqa_{tag}", context, colours, kinds, args.model
        )
        report["contexts"][str(context)] = {
            "caption": captions,
            "search": search,
            "vqa_colour_accuracy": vqa,
            "seconds": round(time.time() - t0, 1),
        }
        print(
            f"context {context:>4}: caption exact {captions['exact_match']:.3f} (colour {captions['colour']:.3f}, "
            f"kind {captions['kind']:.3f}) | search P@{args.k} {search['p_at_k']:.3f} ({search['queries']} queries) "
            f"| VQA colour {vqa:.3f} | {time.time() - t0:.0f} s",
            flush=True,
        )
    print(json.dumps(report))
    return report


if __name__ == "__main__":
    main()
