"""Held-out accuracy of a VQA model on shapes questions, overall and per question type.

    python benchmarks/eval_vqa.py --split test --seed 0
    python benchmarks/eval_vqa.py --split test --seed 7      # a generator seed never trained on

Questions come from `fiftyone_blip.shapes.data.make_questions` (one of each
type per image where the type is well posed); answers from the library's VQA
model step (`fiftyone_blip.vqa.Answerer`), in two modes: free generation
(greedy, or beam with --strategy beam) and closed answers (each type's answer
list ranked by the decoder's likelihood). Images are preprocessed by the
model's own BlipImageProcessor, as at training time.
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from fiftyone_blip.models import load_model
from fiftyone_blip.shapes import data as shapes
from fiftyone_blip.shapes.train import IMAGE_SIZE, pixel_tensor
from fiftyone_blip.shapes.train_vqa import accuracy_by_type, answer_questions, question_set


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="shapes-tiny")
    parser.add_argument("--split", default="test", choices=tuple(shapes.SPLIT_SEEDS))
    parser.add_argument("--seed", type=int, default=0, help="generator seed of the images (0: the training seed)")
    parser.add_argument("--count", type=int, default=1000, help="images")
    parser.add_argument("--strategy", default="greedy", choices=("greedy", "beam"))
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    loaded = load_model(args.model, task="vqa", device="cpu")
    scenes = shapes.make_scenes(args.count, args.split, seed=args.seed, size=IMAGE_SIZE)
    pixels = pixel_tensor(loaded.processor, scenes)
    pairs = question_set(scenes, 1, seed=args.seed)
    result = {
        "model": args.model,
        "split": args.split,
        "seed": args.seed,
        "images": args.count,
        "questions": len(pairs),
    }
    for mode, closed in (("free", False), ("closed", True)):
        t0 = time.time()
        answers = answer_questions(loaded.model, loaded.processor, pixels, pairs, closed=closed, strategy=args.strategy)
        result[mode] = accuracy_by_type(pairs, answers)
        result[f"{mode}_seconds"] = round(time.time() - t0, 1)
    result["strategy"] = args.strategy
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
