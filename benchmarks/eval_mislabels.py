"""How well image-text matching finds injected label errors on held-out shapes data.

    python benchmarks/eval_mislabels.py                      # 1000 test-split images, shapes-tiny
    python benchmarks/eval_mislabels.py --templates          # compare label prompt templates
    python benchmarks/eval_mislabels.py --suggest --count 1000 --split test --seed 0   # suggested classes

Held-out data: the shapes `test` split (never seen in training). For each
target, a share of the items (10% or 40%) gets a wrong value, either at random
or by a hard swap that shares attributes with the truth:

- class: the image's class label (the kind of its largest shape, 5 classes);
  random: another kind; hard: the kind of another shape in the same image
  (images with one shape get a random other kind);
- colour class: colour + kind of the largest shape ("red circle", 30 classes);
  random: another of the 30; hard: same shape, other colour;
- detection: each object's kind, scored on its crop; random: another kind;
  hard: the kind of another object in the same image (random for single-object images);
- caption: the ground-truth caption; random: another image's caption; hard:
  one object's colour changed (same shape, other colour).

`--suggest`: with 10% of the class labels (and, separately, of the object
kinds) replaced at random by another kind, the labels the default rule flags
(`mislabels.DEFAULT_THRESHOLD`) and, of the flagged mislabels, the share whose
suggested class (`mislabels.suggestion`, the class `find_mislabels` stores)
is the true one, and the share naming a kind present in the image, averaged
over `--draws` noise draws; the class label's figures also by how much wider
the largest shape is than the next (one shape, 3+ px, 1-2 px, a tie).

Scores: ITM (1 - p), ITC cosine ((1 - cos) / 2) and ITM + margin
((2 - p - margin) / 3), the same functions `fiftyone_blip.find_mislabels`
uses (`mislabels.Matcher`, `mislabels.mistakenness`). Metrics: AUROC, AUPRC
(average precision) and precision@k with k = the number of injected errors,
beside a random ranking (AUROC 0.5, AUPRC and P@k = the noise rate).
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fiftyone_blip import mislabels, models  # noqa: E402
from fiftyone_blip.images import Preprocessor, crop  # noqa: E402
from fiftyone_blip.shapes import data as shapes  # noqa: E402


def auroc(scores: np.ndarray, positive: np.ndarray) -> float:
    """Probability that a random positive (an error) outscores a random negative; ties count half."""
    from scipy.stats import rankdata

    ranks = rankdata(scores)
    n_pos, n_neg = int(positive.sum()), int((~positive).sum())
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def auprc(scores: np.ndarray, positive: np.ndarray) -> float:
    """Average precision: mean precision at the rank of each positive (errors ranked first)."""
    order = np.argsort(-scores, kind="stable")
    hits = positive[order]
    precision = np.cumsum(hits) / np.arange(1, len(hits) + 1)
    return float(precision[hits].mean())


def precision_at_k(scores: np.ndarray, positive: np.ndarray, k: int) -> float:
    order = np.argsort(-scores, kind="stable")
    return float(positive[order[:k]].mean())


def largest(scene):
    return max(scene.objects, key=lambda o: (o.box[2] - o.box[0], -scene.objects.index(o)))


# a class label is only as visible as its shape's lead: chosen on the validation split
LEAD_CLEAR = 3


def size_lead(scene) -> int:
    """How many pixels wider the largest shape's box is than the next one's (0: a tie; -1: one shape)."""
    widths = sorted((o.box[2] - o.box[0] for o in scene.objects), reverse=True)
    return widths[0] - widths[1] if len(widths) > 1 else -1


def pixels_of(preprocess, images):
    import torch

    return torch.from_numpy(np.stack([preprocess.from_image(image)[0] for image in images]))


def class_scores(matcher, pixels, classes, template, batch=256):
    """ITM (n, C) and ITC (n, C) of every image against every class prompt."""
    import torch

    prompts = [template.format(label=c) for c in classes]
    itm, itc = [], []
    with torch.inference_mode():
        text_features = matcher.text_features(prompts)
        for start in range(0, len(pixels), batch):
            chunk = pixels[start : start + batch]
            result = matcher.score(chunk, [prompts[0]] * len(chunk), classes, template)
            itm.append(result["class_itm"])
            embeds = matcher.loaded.image_embeds(chunk)
            itc.append((matcher.image_features(embeds) @ text_features.T).numpy())
    return np.concatenate(itm), np.concatenate(itc)


def pair_scores(matcher, pixels, texts, batch=256):
    itm, itc = [], []
    for start in range(0, len(pixels), batch):
        result = matcher.score(pixels[start : start + batch], texts[start : start + batch])
        itm.append(result["itm"])
        itc.append(result["itc"])
    return np.concatenate(itm), np.concatenate(itc)


def noisy_indices(n: int, rate: float, rng: random.Random) -> np.ndarray:
    flags = np.zeros(n, dtype=bool)
    flags[rng.sample(range(n), round(rate * n))] = True
    return flags


def label_methods(itm_matrix, itc_matrix, assigned: list[int], rivals_of) -> dict[str, np.ndarray]:
    """Mistakenness per method for assigned class indices; rivals_of(i) excludes a row's own labels."""
    rows = np.arange(len(assigned))
    p = itm_matrix[rows, assigned]
    best_other = np.array([max(itm_matrix[i, j] for j in rivals_of(i)) for i in rows])
    return {
        "ITM": mislabels.mistakenness(itm=p, method="itm"),
        "ITC cosine": mislabels.mistakenness(itc=itc_matrix[rows, assigned], method="itc"),
        "ITM + margin": mislabels.mistakenness(itm=p, margin=p - best_other, method="itm+margin"),
    }


def evaluate(name, truth, corrupt, score, n_items, rates, seed, rows):
    """truth: list of true values; corrupt(i, kind, rng) -> wrong value; score(values) -> {method: scores}."""
    for kind in ("random", "hard"):
        for rate in rates:
            rng = random.Random(f"{seed}/{name}/{kind}/{rate}")
            noisy = noisy_indices(n_items, rate, rng)
            values = [corrupt(i, kind, rng) if noisy[i] else truth[i] for i in range(n_items)]
            k = int(noisy.sum())
            rows.append((name, kind, rate, "random ranking", 0.5, rate, rate))
            for method, scores in score(values).items():
                rows.append(
                    (
                        name,
                        kind,
                        rate,
                        method,
                        auroc(scores, noisy),
                        auprc(scores, noisy),
                        precision_at_k(scores, noisy, k),
                    )
                )


def object_crops(scenes, images, kinds, padding):
    """Every object's crop (box grown by `padding`), its kind's index and its scene's index."""
    crops, truth, scene_of = [], [], []
    for s, (scene, image) in enumerate(zip(scenes, images)):
        for obj in scene.objects:
            x0, y0, x1, y1 = obj.box
            box = [x0 / scene.size, y0 / scene.size, (x1 - x0) / scene.size, (y1 - y0) / scene.size]
            crops.append(crop(image, box, padding))
            truth.append(kinds.index(obj.kind))
            scene_of.append(s)
    return crops, truth, scene_of


def suggestion_figures(itm_matrix, truth, kinds, present, draws: int, name: str) -> dict:
    """Of the mislabels the default rule flags (10% random noise): the share whose suggested class is the
    true one, and the share naming a kind present in the image, means over `draws` noise draws."""
    n, flagged, right, in_image = len(truth), [], [], []
    for draw in range(draws):
        rng = random.Random(f"suggest/{name}/{draw}")
        noisy = noisy_indices(n, 0.1, rng)
        assigned = [
            rng.choice([j for j in range(len(kinds)) if j != t]) if wrong else t for t, wrong in zip(truth, noisy)
        ]
        p = itm_matrix[np.arange(n), assigned]
        flags = mislabels.select_flags(
            mislabels.mistakenness(itm=p, method="itm"), threshold=mislabels.DEFAULT_THRESHOLD
        )
        found = np.flatnonzero(flags & noisy)
        suggested = [
            kinds.index(mislabels.suggestion(itm_matrix[i], kinds, kinds[assigned[i]], {kinds[assigned[i]]})[0])
            for i in found
        ]
        flagged.append(len(found))
        right.append(np.mean([s == truth[i] for s, i in zip(suggested, found)]) if len(found) else np.nan)
        in_image.append(np.mean([kinds[s] in present[i] for s, i in zip(suggested, found)]) if len(found) else np.nan)
    return {
        "items": n,
        "injected": round(0.1 * n),
        "flagged_mislabels": round(float(np.mean(flagged)), 1),
        "suggested_is_true": round(float(np.nanmean(right)), 3),
        "suggested_in_image": round(float(np.nanmean(in_image)), 3),
    }


def suggest_report(args, matcher, preprocess, scenes, images, pixels, kinds, template, padding) -> dict:
    """`--suggest`: suggested-class figures for the class label (largest shape) and for object kinds (crops)."""
    import json

    class_truth = [kinds.index(largest(s).kind) for s in scenes]
    itm, _ = class_scores(matcher, pixels, kinds, template)
    present = [{o.kind for o in s.objects} for s in scenes]
    single = np.array([len(s.objects) == 1 for s in scenes])
    report = {"split": args.split, "seed": args.seed, "count": args.count, "model": args.model, "draws": args.draws}
    report["class"] = suggestion_figures(itm, class_truth, kinds, present, args.draws, "class")
    lead = np.array([size_lead(s) for s in scenes])
    groups = {
        "class, one-shape images": single,
        f"class, largest shape {LEAD_CLEAR}+ px wider than the next": ~single & (lead >= LEAD_CLEAR),
        f"class, largest shape 1-{LEAD_CLEAR - 1} px wider than the next": ~single & (lead >= 1) & (lead < LEAD_CLEAR),
        "class, two shapes of the largest width (a tie: the first listed is the class)": ~single & (lead == 0),
    }
    # how visible the class is: the kind covering the most pixels is the class in this share of images
    most_pixels = [max(s.objects, key=lambda o: shapes.covered_pixels(o, s.size)).kind for s in scenes]
    agrees = np.array([k == kinds[t] for k, t in zip(most_pixels, class_truth)])
    report["class is the kind covering the most pixels"] = {
        "images": round(float(agrees.mean()), 3),
        "images of several shapes": round(float(agrees[~single].mean()), 3),
    }
    best = np.array([int(np.argmax(row)) == t for row, t in zip(itm, class_truth)])  # the same reading by ITM
    report["class is the kind of the highest ITM"] = {
        "images": round(float(best.mean()), 3),
        "images of several shapes": round(float(best[~single].mean()), 3),
    }
    for name, chosen in groups.items():
        report[name] = suggestion_figures(
            itm[chosen],
            [t for t, c in zip(class_truth, chosen) if c],
            kinds,
            [k for k, c in zip(present, chosen) if c],
            args.draws,
            "class-single" if name == "class, one-shape images" else name,
        )
    crops, det_truth, det_scene = object_crops(scenes, images, kinds, padding)
    det_present = [present[i] for i in det_scene]
    ditm, _ = class_scores(matcher, pixels_of(preprocess, crops), kinds, template)
    report["detection"] = suggestion_figures(ditm, det_truth, kinds, det_present, args.draws, "detection")
    print(json.dumps(report))
    return report


def format_table(rows) -> str:
    """One line per target, noise and rate; AUROC / AUPRC / P@k per score (markdown)."""
    methods = ["ITM", "ITC cosine", "ITM + margin"]
    header = (
        "| target | noise | rate | random AUROC / AUPRC / P@k | "
        + " | ".join(f"{m} AUROC / AUPRC / P@k" for m in methods)
        + " |"
    )
    lines = [header, "|---|---|---:|---:|" + "---:|" * len(methods)]
    grouped: dict = {}
    for name, kind, rate, method, a, p, k in rows:
        grouped.setdefault((name, kind, rate), {})[method] = f"{a:.3f} / {p:.3f} / {k:.3f}"
    for (name, kind, rate), by in grouped.items():
        cells = [by["random ranking"]] + [by.get(m, "n/a") for m in methods]
        lines.append(f"| {name} | {kind} | {int(rate * 100)}% | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", type=int, default=1000, help="held-out images (1000)")
    parser.add_argument("--split", default="test", choices=["test", "validation"], help="held-out split (test)")
    parser.add_argument("--model", default="shapes-tiny")
    parser.add_argument("--template", default=None, help="label prompt template (default: the model's)")
    parser.add_argument("--crop-padding", type=float, default=None, help="detections: box growth (model default)")
    parser.add_argument("--seed", type=int, default=0, help="shapes generator seed; 0 is the training seed (0)")
    parser.add_argument("--noise-seed", type=int, default=0, help="seed of the injected noise (0)")
    parser.add_argument("--templates", action="store_true", help="compare templates on the class label only")
    parser.add_argument("--suggest", action="store_true", help="suggested-class figures on flagged mislabels")
    parser.add_argument("--draws", type=int, default=20, help="--suggest: noise draws averaged (20)")
    args = parser.parse_args(argv)

    import torch

    torch.manual_seed(0)
    started = time.time()
    loaded = models.load_model(args.model, task="match", device="cpu")
    matcher = mislabels.Matcher(loaded)
    preprocess = Preprocessor(loaded.processor.image_processor, loaded.image_size, "squash")
    scenes = shapes.make_scenes(args.count, split=args.split, seed=args.seed, size=96)
    images = [scene.render() for scene in scenes]
    pixels = pixels_of(preprocess, images)
    kinds = sorted(shapes.KINDS)
    kind_index = {k: i for i, k in enumerate(kinds)}
    class_truth = [kind_index[largest(s).kind] for s in scenes]

    if args.templates:
        templates = ["a {label}", "{label}", "a photo of a {label}", "a red {label}", "a {label} in the center"]
        print(f"class label, 10% random noise, {args.count} test images, model {args.model}")
        print(f"{'template':<28} {'AUROC ITM':>10} {'AUROC ITM+margin':>17}")
        for template in templates:
            itm, itc = class_scores(matcher, pixels, kinds, template)
            rows = []

            def corrupt(i, kind, rng):
                return rng.choice([j for j in range(len(kinds)) if j != class_truth[i]])

            def score(values, itm=itm, itc=itc):
                return label_methods(itm, itc, values, lambda i: [j for j in range(len(kinds)) if j != values[i]])

            evaluate("class", class_truth, corrupt, score, args.count, [0.1], args.noise_seed, rows)
            by = {r[3]: r[4] for r in rows if r[1] == "random"}
            print(f"{template!r:<28} {by['ITM']:>10.4f} {by['ITM + margin']:>17.4f}")
        return

    template = args.template or mislabels.default_template(args.model)
    padding = args.crop_padding or mislabels.default_crop_padding(args.model)
    mislabels.check_template(template)
    if args.suggest:
        suggest_report(args, matcher, preprocess, scenes, images, pixels, kinds, template, padding)
        return
    rows: list[tuple] = []
    rates = [0.1, 0.4]

    # class label: kind of the largest shape
    itm, itc = class_scores(matcher, pixels, kinds, template)

    def corrupt_class(i, kind, rng):
        if kind == "hard":
            others = sorted({o.kind for o in scenes[i].objects} - {kinds[class_truth[i]]})
            if others:
                return kind_index[rng.choice(others)]
        return rng.choice([j for j in range(len(kinds)) if j != class_truth[i]])

    def score_class(values):
        return label_methods(itm, itc, values, lambda i: [j for j in range(len(kinds)) if j != values[i]])

    evaluate("class (5 kinds)", class_truth, corrupt_class, score_class, args.count, rates, args.noise_seed, rows)

    # colour class: colour + kind of the largest shape
    colour_classes = [f"{c} {k}" for c in sorted(shapes.COLOURS) for k in kinds]
    colour_index = {c: i for i, c in enumerate(colour_classes)}
    colour_truth = [colour_index[f"{largest(s).colour} {largest(s).kind}"] for s in scenes]
    citm, citc = class_scores(matcher, pixels, colour_classes, template)

    def corrupt_colour(i, kind, rng):
        colour, shape = colour_classes[colour_truth[i]].split()
        if kind == "hard":
            return colour_index[f"{rng.choice([c for c in sorted(shapes.COLOURS) if c != colour])} {shape}"]
        return rng.choice([j for j in range(len(colour_classes)) if j != colour_truth[i]])

    def score_colour(values):
        return label_methods(citm, citc, values, lambda i: [j for j in range(len(colour_classes)) if j != values[i]])

    evaluate("colour class (30)", colour_truth, corrupt_colour, score_colour, args.count, rates, args.noise_seed, rows)

    # detections: each object's kind on its crop
    crops, det_truth, det_scene = object_crops(scenes, images, kinds, padding)
    crop_pixels = pixels_of(preprocess, crops)
    ditm, ditc = class_scores(matcher, crop_pixels, kinds, template)

    def corrupt_detection(i, kind, rng):
        if kind == "hard":
            others = sorted({o.kind for o in scenes[det_scene[i]].objects} - {kinds[det_truth[i]]})
            if others:
                return kind_index[rng.choice(others)]
        return rng.choice([j for j in range(len(kinds)) if j != det_truth[i]])

    def score_detection(values):
        return label_methods(ditm, ditc, values, lambda i: [j for j in range(len(kinds)) if j != values[i]])

    evaluate(
        "detection (kind)", det_truth, corrupt_detection, score_detection, len(crops), rates, args.noise_seed, rows
    )

    # captions
    captions = [s.caption() for s in scenes]
    recolour_rng = random.Random(f"{args.noise_seed}/recolour")
    hard_captions = []
    for scene in scenes:
        objects = list(scene.objects)
        j = recolour_rng.randrange(len(objects))
        o = objects[j]
        colour = recolour_rng.choice([c for c in sorted(shapes.COLOURS) if c != o.colour])
        objects[j] = shapes.ShapeObject(o.kind, colour, o.cell, o.box)
        hard_captions.append(
            shapes.ShapeScene(scene.index, scene.split, scene.size, scene.background, tuple(objects), 0).caption()
        )
    swap_rng = random.Random(f"{args.noise_seed}/swap")
    swapped = []
    for i in range(len(scenes)):
        j = swap_rng.randrange(len(scenes))
        while captions[j] == captions[i]:
            j = swap_rng.randrange(len(scenes))
        swapped.append(captions[j])
    variants = {"true": captions, "random": swapped, "hard": hard_captions}
    caption_scores = {name: pair_scores(matcher, pixels, texts) for name, texts in variants.items()}

    def corrupt_caption(i, kind, rng):
        return (kind, i)

    def score_caption(values):
        picked = [v if isinstance(v, tuple) else ("true", i) for i, v in enumerate(values)]
        p = np.array([caption_scores[name][0][i] for name, i in picked])
        cos = np.array([caption_scores[name][1][i] for name, i in picked])
        return {
            "ITM": mislabels.mistakenness(itm=p, method="itm"),
            "ITC cosine": mislabels.mistakenness(itc=cos, method="itc"),
        }

    evaluate("caption", captions, corrupt_caption, score_caption, len(scenes), rates, args.noise_seed, rows)

    print(
        f"Injected-noise label QA: {args.count} shapes {args.split}-split images (generator seed {args.seed}, "
        f"{len(crops)} objects), model {args.model}, "
        f"template {template!r}, crop padding {padding}"
    )
    print(format_table(rows))
    # Which caption attributes the matcher can tell apart at all: the true caption
    # against the same caption with one object's kind (or colour) changed.
    probe_rng = random.Random(f"{args.noise_seed}/probe")
    print("\nAttribute probe: ITM AUROC of the true caption against one attribute changed")
    for attribute in ("kind", "colour"):
        changed = []
        for scene in scenes:
            objects = list(scene.objects)
            j = probe_rng.randrange(len(objects))
            o = objects[j]
            if attribute == "kind":
                o = shapes.ShapeObject(probe_rng.choice([k for k in kinds if k != o.kind]), o.colour, o.cell, o.box)
            else:
                o = shapes.ShapeObject(
                    o.kind, probe_rng.choice([c for c in sorted(shapes.COLOURS) if c != o.colour]), o.cell, o.box
                )
            objects[j] = o
            changed.append(
                shapes.ShapeScene(scene.index, scene.split, scene.size, scene.background, tuple(objects), 0).caption()
            )
        p_changed, _ = pair_scores(matcher, pixels, changed)
        p_true = caption_scores["true"][0]
        labels = np.r_[np.zeros(len(p_true), bool), np.ones(len(p_changed), bool)]
        print(f"  {attribute:<7} changed: AUROC {auroc(-np.r_[p_true, p_changed], labels):.4f}")
    print(f"({time.time() - started:.0f} s)")


if __name__ == "__main__":
    main()
