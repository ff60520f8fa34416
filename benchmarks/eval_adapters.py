"""Held-out exact match of the shapes-tiny language adapters, all languages in one process.

    .venv/bin/python benchmarks/eval_adapters.py                  # 1000 test-split images
    .venv/bin/python benchmarks/eval_adapters.py --count 200 --languages en de
    .venv/bin/python benchmarks/eval_adapters.py --seed 7          # shapes of a generator seed no model saw
    .venv/bin/python benchmarks/eval_adapters.py --seed 5 --split validation   # for choices: never `test`

Builds (or reuses) a dataset of `--count` shapes images from the `test`
split, which no model or adapter saw in training, captions it in every
language with greedy decoding on one loaded shapes-tiny model (the adapters
switch on it), and prints per language: exact match against the ground-truth
caption field, the adapter's size against the base model, and captioning
time. English is captioned before and after the adapters load, to show that
it does not change. Prints one JSON line at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import time

os.environ.setdefault("FIFTYONE_DATABASE_VALIDATION", "false")
os.environ.setdefault("FIFTYONE_DO_NOT_TRACK", "true")
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--count", type=int, default=1000)
    parser.add_argument("--dataset", default="shapes-test-adapters")
    parser.add_argument("--languages", nargs="+", default=["en", "de", "ru"])
    parser.add_argument("--model", default="shapes-tiny")
    parser.add_argument("--seed", type=int, default=0, help="shapes generator seed; 0 is the training seed (0)")
    parser.add_argument("--split", default="test", choices=["test", "validation", "train"])
    args = parser.parse_args()

    import fiftyone_blip
    from fiftyone_blip import demo
    from fiftyone_blip.shapes import GT_CAPTION_FIELDS

    name = args.dataset if args.seed == 0 else f"{args.dataset}-seed{args.seed}"
    if args.split != "test":
        name = f"{name}-{args.split}"
    dataset = fiftyone_blip.load_shapes_dataset(name, count=args.count, split=args.split, seed=args.seed)
    manifests = {m["language"]: m for m in fiftyone_blip.list_adapters(args.model)}
    results = {}
    order = list(args.languages) + (["en"] if "en" in args.languages else [])
    for position, language in enumerate(order):
        field = f"eval_{language}" if position < len(args.languages) else "eval_en_after"
        started = time.time()
        fiftyone_blip.caption(
            dataset,
            model=args.model,
            field=field,
            language=language,
            batch_size=64,
            overwrite=True,
            progress=False,
        )
        seconds = time.time() - started
        score = demo.exact_match(dataset, field, GT_CAPTION_FIELDS[language])
        row = {"exact_match": round(score, 4), "seconds": round(seconds, 1)}
        if language in manifests and language != "en":
            p = manifests[language]["parameters"]
            row.update(trainable_parameters=p["trainable"], base_parameters=p["base"], size_ratio=p["ratio"])
        results[field.removeprefix("eval_")] = row
        print(
            f"{field.removeprefix('eval_'):<10} exact match {score:.4f} on {len(dataset)} {args.split} images ({seconds:.1f} s)"
        )
    if "en" in args.languages:
        same = dataset.values("eval_en") == dataset.values("eval_en_after")
        results["english_unchanged"] = same
        print(f"English captions identical before and after the adapters loaded: {same}")
    print(
        json.dumps(
            {"count": len(dataset), "seed": args.seed, "split": args.split, "model": args.model, "results": results}
        )
    )


if __name__ == "__main__":
    main()
