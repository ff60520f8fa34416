"""CapFilt on shapes captions with injected noise: how many captions are right after it, and its flags.

    python benchmarks/eval_capfilt.py --split validation      # choose the threshold (scan printed)
    python benchmarks/eval_capfilt.py --split test
    python benchmarks/eval_capfilt.py --split test --seed 13  # an unseen generator seed

A copy of `gt_caption` gets 30% of its values replaced, in two separate
runs: "swap" (another image's caption, never the same text) and "attribute"
(one object's colour, kind or position changed, chosen at random). Then
`fob.capfilt` (bundled shapes-tiny captioner and matcher, 5 synthetic
captions per image) and, for the thresholds scanned, the filter's decision
on the stored scores (`caption_filter.choose`, the rule the run applies).
Figures: share of correct captions before / after (correct: equal to
`gt_caption`), share of correct originals replaced, precision and recall
of the flags (a flag: the original caption was rejected) on the noisy ones.
"""

from __future__ import annotations

import argparse
import dataclasses
import random
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fiftyone_blip.shapes import data as shapes  # noqa: E402

CHANGES = ("colour", "kind", "position")


def one_attribute_changed(scene, rng: random.Random) -> str:
    """The scene's caption with one object's colour, kind or position changed."""
    objects = list(scene.objects)
    i = rng.randrange(len(objects))
    change = rng.choice(CHANGES)
    obj = objects[i]
    if change == "colour":
        objects[i] = dataclasses.replace(obj, colour=rng.choice([c for c in sorted(shapes.COLOURS) if c != obj.colour]))
    elif change == "kind":
        objects[i] = dataclasses.replace(obj, kind=rng.choice([k for k in shapes.KINDS if k != obj.kind]))
    else:
        taken = {o.cell for o in objects}
        objects[i] = dataclasses.replace(obj, cell=rng.choice([c for c in sorted(shapes.POSITIONS) if c not in taken]))
    return dataclasses.replace(scene, objects=tuple(objects)).caption()


def noisy_captions(scenes, noise: str, rate: float, seed: str) -> tuple[list[str], list[bool]]:
    rng = random.Random(f"capfilt/{seed}/{noise}/{rate}")
    truth = [s.caption() for s in scenes]
    noisy = [False] * len(scenes)
    for i in rng.sample(range(len(scenes)), round(rate * len(scenes))):
        noisy[i] = True
    captions = []
    for i, scene in enumerate(scenes):
        if not noisy[i]:
            captions.append(truth[i])
        elif noise == "swap":
            captions.append(rng.choice([t for t in truth if t != truth[i]]))
        else:
            captions.append(one_attribute_changed(scene, rng))
    return captions, noisy


def figures(truth, noisy, captions, decisions) -> dict:
    n = len(truth)
    kept = [d["caption"] for d in decisions]
    flags = [bool(d["rejected"]) for d in decisions]
    clean = [not x for x in noisy]
    flagged_noisy = sum(f and x for f, x in zip(flags, noisy))
    return {
        "correct_before": sum(c == t for c, t in zip(captions, truth)) / n,
        "correct_after": sum(k == t for k, t in zip(kept, truth)) / n,
        "clean_replaced": sum(f for f, c in zip(flags, clean) if c) / max(1, sum(clean)),
        "precision": flagged_noisy / max(1, sum(flags)),
        "recall": flagged_noisy / max(1, sum(noisy)),
        "flagged": sum(flags),
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--split", default="test")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--count", type=int, default=500)
    parser.add_argument("--rate", type=float, default=0.3)
    parser.add_argument("--candidates", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--thresholds", default="0.02,0.05,0.1,0.2,0.3,0.5,0.7,0.8,0.9")
    args = parser.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    import fiftyone_blip as fob
    from fiftyone_blip import caption_filter

    name = f"eval-capfilt-{args.split}-{args.seed}-{args.count}"
    dataset = fob.load_shapes_dataset(name, count=args.count, split=args.split, seed=args.seed)
    scenes = shapes.make_scenes(args.count, split=args.split, seed=args.seed)
    truth = [s.caption() for s in scenes]
    assert dataset.values("gt_caption") == truth  # samples in scene order
    thresholds = [float(t) for t in args.thresholds.split(",")]
    print(
        "| noise | threshold | correct before | correct after | correct originals replaced | flag precision | flag recall |"
    )
    print("|---|---|---|---|---|---|---|")
    for noise in ("swap", "attribute"):
        captions, noisy = noisy_captions(scenes, noise, args.rate, f"{args.split}/{args.seed}")
        dataset.set_values("noisy_caption", captions)
        result = fob.capfilt(
            dataset,
            "noisy_caption",
            "capfilt",
            caption_model="shapes-tiny",
            match_model="shapes-tiny",
            num_candidates=args.candidates,
            overwrite=True,
            progress=False,
            num_workers=0,
        )
        stored = dataset.values("capfilt_candidates")
        scans = sorted({*thresholds, caption_filter.DEFAULT_THRESHOLD})
        for threshold in scans:
            decisions = []
            for value in stored:
                scored = [(c.label, c.confidence, c.origin) for c in value.classifications]
                decisions.append(
                    caption_filter.choose(
                        [(t, p) for t, p, o in scored if o == "original"],
                        [(t, p) for t, p, o in scored if o == "synthetic"],
                        threshold,
                    )
                )
            f = figures(truth, noisy, captions, decisions)
            mark = " (default)" if threshold == caption_filter.DEFAULT_THRESHOLD else ""
            print(
                f"| {noise} | {threshold}{mark} | {f['correct_before']:.3f} | {f['correct_after']:.3f} | "
                f"{f['clean_replaced']:.3f} | {f['precision']:.3f} | {f['recall']:.3f} |"
            )
        # the run itself applied the default threshold: its flags must be the scan's
        assert result["flagged_samples"] == sum(dataset.values("capfilt_rejected", missing_value=False))
    dataset.delete()


if __name__ == "__main__":
    main()
