"""How many samples the default flagging rule of `find_mislabels` flags, clean and with injected errors.

    python benchmarks/eval_flag_rule.py --split validation          # where the rule was chosen
    python benchmarks/eval_flag_rule.py --split test                # reported
    python benchmarks/eval_flag_rule.py --split test --seed 7       # shapes of a seed no model saw
    python benchmarks/eval_flag_rule.py --split validation --sweep  # ITM-probability cut-offs side by side

For each target (class label: the kind of the largest shape; detection: each
object's kind on its crop; caption: the ground-truth caption), on `--count`
held-out shapes images: the share of a clean set that the rule flags, and,
with 10% of the values replaced at random (another kind; another image's
caption), the precision and recall of the flags, averaged over `--draws`
noise draws. The rule is the library's own default
(`mislabels.DEFAULT_METHOD`, `mislabels.DEFAULT_THRESHOLD`), applied with
`mislabels.mistakenness` and `mislabels.select_flags`; `--rule` compares it
with the previous default (ITM + margin >= 0.5).
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import eval_mislabels as E  # noqa: E402

from fiftyone_blip import mislabels, models  # noqa: E402
from fiftyone_blip.images import crop  # noqa: E402
from fiftyone_blip.shapes import data as shapes  # noqa: E402

NOISE = 0.1


def rule_flags(itm_matrix: np.ndarray, assigned: np.ndarray, method: str, threshold: float) -> np.ndarray:
    """Flags of a class-score matrix (items x classes) for the assigned class of each item."""
    rows = np.arange(len(assigned))
    p = itm_matrix[rows, assigned]
    others = itm_matrix.copy()
    others[rows, assigned] = -np.inf
    margin = p - others.max(axis=1)
    scores = mislabels.mistakenness(itm=p, margin=margin, method=method)
    return mislabels.select_flags(scores, threshold=threshold)


def pair_flags(p: np.ndarray, method: str, threshold: float) -> np.ndarray:
    return mislabels.select_flags(mislabels.mistakenness(itm=p, method="itm"), threshold=threshold)


def measure(name, clean_flags, noisy_flags_of, n: int, draws: int) -> dict:
    """Clean flag share; mean precision and recall over noise draws."""
    precision, recall, flagged = [], [], []
    for draw in range(draws):
        rng = random.Random(f"flag-rule/{name}/{draw}")
        noisy = np.zeros(n, dtype=bool)
        noisy[rng.sample(range(n), round(NOISE * n))] = True
        flags = noisy_flags_of(noisy, rng)
        hits = int((flags & noisy).sum())
        precision.append(hits / max(int(flags.sum()), 1))
        recall.append(hits / int(noisy.sum()))
        flagged.append(int(flags.sum()))
    return {
        "items": n,
        "clean_flagged": int(clean_flags.sum()),
        "clean_share": round(float(clean_flags.mean()), 4),
        "noisy_flagged": round(float(np.mean(flagged)), 1),
        "injected": round(NOISE * n),
        "precision": round(float(np.mean(precision)), 3),
        "recall": round(float(np.mean(recall)), 3),
    }


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", type=int, default=1000, help="held-out images (1000)")
    parser.add_argument("--split", default="test", choices=["test", "validation"])
    parser.add_argument("--seed", type=int, default=0, help="shapes generator seed; 0 is the training seed (0)")
    parser.add_argument("--draws", type=int, default=20, help="noise draws averaged (20)")
    parser.add_argument("--model", default="shapes-tiny")
    parser.add_argument("--sweep", action="store_true", help="class labels: ITM-probability cut-offs side by side")
    parser.add_argument(
        "--rule",
        default="default",
        choices=["default", "previous"],
        help="default: the library's; previous: ITM + margin >= 0.5",
    )
    args = parser.parse_args(argv)

    import torch

    torch.manual_seed(0)
    loaded = models.load_model(args.model, task="match", device="cpu")
    matcher = mislabels.Matcher(loaded)
    preprocess = loaded.preprocessor("squash")
    scenes = shapes.make_scenes(args.count, split=args.split, seed=args.seed, size=96)
    images = [scene.render() for scene in scenes]
    pixels = E.pixels_of(preprocess, images)
    kinds = sorted(shapes.KINDS)
    template = mislabels.default_template(args.model)
    if args.rule == "default":
        method, threshold = mislabels.DEFAULT_METHOD, mislabels.DEFAULT_THRESHOLD
    else:
        method, threshold = "itm+margin", 0.5

    def wrong_kind(truth: np.ndarray):
        def noisy_flags(noisy, rng):
            assigned = truth.copy()
            for i in np.flatnonzero(noisy):
                assigned[i] = rng.choice([j for j in range(len(kinds)) if j != truth[i]])
            return rule_flags(itm, assigned, method, threshold)

        return noisy_flags

    report = {"split": args.split, "seed": args.seed, "count": args.count, "method": method, "threshold": threshold}
    itm, _ = E.class_scores(matcher, pixels, kinds, template)
    class_truth = np.array([kinds.index(E.largest(s).kind) for s in scenes])
    if args.sweep:
        for cut in (0.02, 0.03, 0.04, 0.05, 0.1, 0.2):
            method, threshold = "itm", 1 - cut
            clean = rule_flags(itm, class_truth, method, threshold)
            row = measure("class", clean, wrong_kind(class_truth), len(scenes), args.draws)
            print(f"class label, flag ITM p <= {cut:.2f}: {json.dumps(row)}")
        return
    clean = rule_flags(itm, class_truth, method, threshold)
    report["class"] = measure("class", clean, wrong_kind(class_truth), len(scenes), args.draws)

    padding = mislabels.default_crop_padding(args.model)
    crops, det_truth = [], []
    for scene, image in zip(scenes, images):
        for obj in scene.objects:
            x0, y0, x1, y1 = obj.box
            box = [x0 / scene.size, y0 / scene.size, (x1 - x0) / scene.size, (y1 - y0) / scene.size]
            crops.append(crop(image, box, padding))
            det_truth.append(kinds.index(obj.kind))
    itm, _ = E.class_scores(matcher, E.pixels_of(preprocess, crops), kinds, template)
    det_truth = np.array(det_truth)
    clean = rule_flags(itm, det_truth, method, threshold)
    report["detection"] = measure("detection", clean, wrong_kind(det_truth), len(crops), args.draws)

    captions = [s.caption() for s in scenes]
    true_p, _ = E.pair_scores(matcher, pixels, captions)
    rotated = captions[1:] + captions[:1]  # another image's caption
    swapped_p, _ = E.pair_scores(matcher, pixels, rotated)
    # a caption has no rival classes: ITM alone, whatever the method
    clean = pair_flags(true_p, method, threshold)

    def noisy_captions(noisy, rng):
        return pair_flags(np.where(noisy, swapped_p, true_p), method, threshold)

    report["caption"] = measure("caption", clean, noisy_captions, len(scenes), args.draws)
    for target in ("class", "detection", "caption"):
        print(f"{target:<10} {json.dumps(report[target])}")
    print(json.dumps(report))


if __name__ == "__main__":
    main()
