"""Speed of the VQA model step at BLIP-base size: images/s with 1 and with 5 questions per image.

    python benchmarks/bench_vqa.py --device cpu --batch-size 8 --repeats 3
    python benchmarks/bench_vqa.py --device cuda --dtype bfloat16 --batch-size 64

A `BlipForQuestionAnswering` with BLIP-base's sizes (ViT-B/16 at 384 px,
12-layer 768-wide question encoder and answer decoder, a 30,524-token
vocabulary) and random weights: speed does not depend on the weights, and
the hub is not reachable here. The step is the library's own
(`fiftyone_blip.vqa.Answerer`): the image is encoded once per batch, each
question adds one question-encoder pass and its answer decoding. Random
weights rarely emit [SEP], so free-form answers run to `--max-new-tokens`
(an upper bound on decoding cost; real answers are 1-3 tokens). Closed
answers rank `--answers` candidates.

Prints one JSON line per mode with the median images/s over `--repeats`
timed batches (after one warm-up batch), and the ratio of the time per image
with 5 questions to that with 1. Needs no FiftyOne.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
import types

import torch

QUESTIONS = (
    "how many people are there?",
    "is it night?",
    "what colour is the car?",
    "is there a dog?",
    "where is the ball?",
)
ANSWERS = ("yes", "no", "0", "1", "2", "3", "red", "blue", "green", "black", "white", "left", "right", "center")


def build(device: str, dtype: str):
    from transformers import BertTokenizerFast, BlipConfig, BlipForQuestionAnswering

    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "[DEC]"]
    words += sorted({w for q in QUESTIONS for w in q.replace("?", " ?").split()} | set(ANSWERS))
    tokenizer = BertTokenizerFast(vocab={w: i for i, w in enumerate(words)}, do_lower_case=True, bos_token="[DEC]")
    config = BlipConfig(
        text_config=dict(
            vocab_size=30524, bos_token_id=words.index("[DEC]"), sep_token_id=3, eos_token_id=3, pad_token_id=0
        ),
        vision_config=dict(image_size=384, patch_size=16),
    )
    config.architectures = ["BlipForQuestionAnswering"]
    torch.manual_seed(0)
    weight_dtype = torch.float32 if device == "cpu" else getattr(torch, dtype)
    model = BlipForQuestionAnswering(config).to(device, weight_dtype).eval()
    processor = types.SimpleNamespace(tokenizer=tokenizer)
    return types.SimpleNamespace(model=model, processor=processor, device=device, dtype=dtype)


def time_mode(loaded, questions, settings, batch_size: int, repeats: int) -> list[float]:
    from fiftyone_blip.vqa import Answerer

    answerer = Answerer(loaded, questions, settings)
    pixels = torch.randn(batch_size, 3, 384, 384)
    answerer(pixels)  # warm-up
    rates = []
    for _ in range(repeats):
        if loaded.device == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        answerer(pixels)
        if loaded.device == "cuda":
            torch.cuda.synchronize()
        rates.append(batch_size / (time.perf_counter() - t0))
    return rates


def main(argv=None) -> None:
    from fiftyone_blip.vqa import Question, VqaSettings

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16", "float16"))
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--max-new-tokens", type=int, default=10)
    parser.add_argument("--modes", default="free,closed", help="comma-separated: free, closed")
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    loaded = build(args.device, args.dtype)
    settings = VqaSettings(max_new_tokens=args.max_new_tokens)
    for mode in args.modes.split(","):
        answers = ANSWERS if mode == "closed" else None
        medians = {}
        for count in (1, 5):
            questions = [Question(q, f"q{i}", answers) for i, q in enumerate(QUESTIONS[:count])]
            rates = time_mode(loaded, questions, settings, args.batch_size, args.repeats)
            medians[count] = statistics.median(rates)
        print(
            json.dumps(
                {
                    "mode": mode,
                    "device": args.device,
                    "dtype": args.dtype,
                    "batch_size": args.batch_size,
                    "threads": torch.get_num_threads(),
                    "max_new_tokens": args.max_new_tokens if mode == "free" else None,
                    "candidates": len(ANSWERS) if mode == "closed" else None,
                    "images_per_s_1_question": round(medians[1], 3),
                    "images_per_s_5_questions": round(medians[5], 3),
                    "cost_of_5_vs_1": round(medians[1] / medians[5], 2),
                }
            ),
            flush=True,
        )


if __name__ == "__main__":
    main()
