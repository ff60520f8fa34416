"""Trains a shapes-tiny language adapter on the `train` images of several generator seeds.

    .venv/bin/python benchmarks/train_adapters_seeds.py -l de --seeds 3 5 9 --count 10000 \
        --lr 5e-3 --epochs 8 --threads 1 -o build/adapters/de

Builds (or reuses) one shapes dataset per seed (`--count` images of the
`train` split each, named `<prefix><seed>`), pools their (image, caption)
pairs in `--language` and trains one adapter on them with
`fiftyone_blip.adapters.training.train_adapter` (the same training as `fiftyone-blip adapters
train`, which takes one dataset). The adapter's held-out split (10%, at most
1,000 pairs) is drawn from the pooled pairs, so it holds images of every seed.
"""

from __future__ import annotations

import argparse
import os

os.environ.setdefault("FIFTYONE_DATABASE_VALIDATION", "false")
os.environ.setdefault("FIFTYONE_DO_NOT_TRACK", "true")
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("-l", "--language", required=True)
    parser.add_argument("--seeds", type=int, nargs="+", required=True)
    parser.add_argument("--count", type=int, default=10000, help="train images per seed")
    parser.add_argument("--prefix", default="shapes-train-seed", help="dataset name prefix")
    parser.add_argument("--images-dir", default=None, help="where the PNG files go, one subfolder per seed")
    parser.add_argument("--model", default="shapes-tiny")
    parser.add_argument("--lr", type=float, default=5e-3)
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("-o", "--out", required=True)
    parser.add_argument("--overwrite", action="store_true")
    args = parser.parse_args()

    import fiftyone_blip
    from fiftyone_blip.adapters.data import pairs_from_dataset
    from fiftyone_blip.adapters.training import AdapterTrainingSettings, train_adapter
    from fiftyone_blip.shapes import GT_CAPTION_FIELDS

    pairs = []
    for seed in args.seeds:
        images = os.path.join(args.images_dir, f"seed{seed}") if args.images_dir else None
        dataset = fiftyone_blip.load_shapes_dataset(
            f"{args.prefix}{seed}", count=args.count, split="train", seed=seed, images_dir=images
        )
        pairs += pairs_from_dataset(dataset, GT_CAPTION_FIELDS[args.language])
    settings = AdapterTrainingSettings(learning_rate=args.lr, epochs=args.epochs)
    manifest = train_adapter(
        pairs,
        args.language,
        model=args.model,
        out=args.out,
        settings=settings,
        threads=args.threads,
        overwrite=args.overwrite,
        progress=False,
    )
    print(manifest["metrics"], manifest["training"]["wall_seconds"], manifest["training"]["cpu_seconds"])


if __name__ == "__main__":
    main()
