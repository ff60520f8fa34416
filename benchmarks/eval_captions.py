"""Held-out exact match of shapes-tiny captions, per decoding strategy, with the library's defaults.

    python benchmarks/eval_captions.py --split test                 # 1000 test-split images
    python benchmarks/eval_captions.py --split test --seed 7        # shapes of a seed no model saw
    python benchmarks/eval_captions.py --strategies greedy beam diverse-beam

Captions rendered shapes scenes (no database: the library's `Captioner`
step on preprocessed pixels) with each strategy's default settings and
prints the share of captions equal to the ground truth, one JSON line at
the end.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fiftyone_blip import captions, models  # noqa: E402
from fiftyone_blip.shapes import data as shapes  # noqa: E402


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", type=int, default=1000, help="held-out images (1000)")
    parser.add_argument("--split", default="test", choices=["test", "validation"])
    parser.add_argument("--seed", type=int, default=0, help="shapes generator seed; 0 is the training seed (0)")
    parser.add_argument("--strategies", nargs="+", default=["greedy", "beam"], choices=captions.STRATEGIES)
    parser.add_argument("--model", default="shapes-tiny")
    parser.add_argument("--batch-size", type=int, default=100)
    args = parser.parse_args(argv)

    import torch

    loaded = models.load_model(args.model, task="caption", device="cpu")
    preprocess = loaded.preprocessor("squash")
    scenes = shapes.make_scenes(args.count, split=args.split, seed=args.seed)
    pixels = torch.from_numpy(np.stack([preprocess.from_image(s.render())[0] for s in scenes]))
    truth = [s.caption() for s in scenes]
    report = {"split": args.split, "seed": args.seed, "count": args.count, "model": args.model, "exact_match": {}}
    for strategy in args.strategies:
        settings = captions.CaptionSettings(strategy=strategy)
        captioner = captions.Captioner(loaded, settings)
        started = time.time()
        out = []
        for start in range(0, len(pixels), args.batch_size):
            out += [row["caption"] for row in captioner(pixels[start : start + args.batch_size])]
        score = float(np.mean([a == b for a, b in zip(out, truth)]))
        report["exact_match"][strategy] = round(score, 4)
        print(f"{strategy:<13} exact match {score:.4f} ({time.time() - started:.1f} s)", flush=True)
    print(json.dumps(report))
    return report


if __name__ == "__main__":
    main()
