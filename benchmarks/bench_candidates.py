"""Several captions per image: what N = 5 candidates cost over one, and when the best of 5 by ITM wins.

    .venv/bin/python benchmarks/bench_candidates.py --mode cost      # shapes-tiny and BLIP-base-sized, CPU
    .venv/bin/python benchmarks/bench_candidates.py --mode quality --split test
    .venv/bin/python benchmarks/bench_candidates.py --mode quality --split test --seed 13

Cost: the captioning step (`captions.Captioner`, the one `fob.caption` runs)
on the same preprocessed batch, one model after the other in one process on
one thread, each setting timed `--repeats` times after a warm-up, the settings
taking turns (medians of CPU seconds per image: on a shared machine the
process's CPU time moves far less with the load than its wall time):
greedy; sampling with N = 1 and N = 5 (`num_captions`); beam search with 5
beams and N = 1 and N = 5. The models: the bundled shapes-tiny
captioner, and a BLIP-base-sized captioner (transformers' default
BlipConfig) with random weights, every caption exactly 20 new tokens.

Quality (shapes-tiny captioner and matcher, held-out images): the greedy
caption against the best of 5 candidates by the matcher's ITM probability
(`mislabels.Matcher.itm`), candidates from nucleus sampling (top-p 0.9) or
from the 5 best beams. "Beats": the best of 5 equals `gt_caption` where the
greedy caption does not; "loses": the reverse.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from fiftyone_blip.shapes import data as shapes  # noqa: E402

SETTINGS = {
    "greedy": dict(strategy="greedy"),
    "sample, N=1": dict(strategy="sample", top_p=0.9, top_k=0),
    "sample, N=5": dict(strategy="sample", top_p=0.9, top_k=0, num_captions=5),
    "beam 5, N=1": dict(strategy="beam", num_beams=5),
    "beam 5, N=5": dict(strategy="beam", num_beams=5, num_captions=5),
}


def pixels(loaded, scenes):
    import torch

    pre = loaded.preprocessor("squash")
    return torch.from_numpy(np.stack([pre.from_image(scene.render())[0] for scene in scenes]))


def time_settings(loaded, batch, repeats: int, fixed_length: int | None) -> dict:
    """Per setting, the median CPU seconds per image (and wall seconds) over `repeats` rounds; the
    settings take turns within each round, so a change in the machine's load reaches all of them."""
    from fiftyone_blip.captions import Captioner, CaptionSettings

    captioners = {}
    for name, kwargs in SETTINGS.items():
        if fixed_length:
            kwargs = {**kwargs, "min_new_tokens": fixed_length, "max_new_tokens": fixed_length}
        captioners[name] = Captioner(loaded, CaptionSettings(**kwargs))
        captioners[name](batch[:1])  # warm-up
    cpu, wall = {name: [] for name in SETTINGS}, {name: [] for name in SETTINGS}
    for _ in range(repeats):
        for name, captioner in captioners.items():
            start_cpu, start_wall = time.process_time(), time.perf_counter()
            captioner(batch)
            cpu[name].append((time.process_time() - start_cpu) / len(batch))
            wall[name].append((time.perf_counter() - start_wall) / len(batch))
    return {name: (statistics.median(cpu[name]), statistics.median(wall[name])) for name in SETTINGS}


def cost(args):
    from bench_caption import build_blip_base

    from fiftyone_blip import models

    rows = {}
    tiny = models.load_model("shapes-tiny", task="caption", device="cpu", dtype="float32", cached=False)
    scenes = shapes.make_scenes(args.tiny_images, split="test", seed=0)
    rows["shapes-tiny"] = time_settings(tiny, pixels(tiny, scenes), args.repeats, None)
    with tempfile.TemporaryDirectory() as folder:
        base = models.load_model(
            str(build_blip_base(Path(folder))), task="caption", device="cpu", dtype="float32", cached=False
        )
        scenes = shapes.make_scenes(args.base_images, split="test", seed=0)
        rows["BLIP-base-sized"] = time_settings(base, pixels(base, scenes), args.repeats, 20)
    tiny_greedy, base_greedy = rows["shapes-tiny"]["greedy"][0], rows["BLIP-base-sized"]["greedy"][0]
    print(
        f"| setting | shapes-tiny CPU s/image ({args.tiny_images} images) | over greedy | "
        f"BLIP-base-sized CPU s/image ({args.base_images} images, 20 tokens) | over greedy | wall s/image |"
    )
    print("|---|---|---|---|---|---|")
    for name in SETTINGS:
        (t, _), (b, b_wall) = rows["shapes-tiny"][name], rows["BLIP-base-sized"][name]
        print(f"| {name} | {t:.4f} | {t / tiny_greedy:.2f}x | {b:.3f} | {b / base_greedy:.2f}x | {b_wall:.3f} |")


def quality(args):
    import torch

    from fiftyone_blip import models
    from fiftyone_blip.captions import Captioner, CaptionSettings
    from fiftyone_blip.mislabels import Matcher

    captioning = models.load_model("shapes-tiny", task="caption", device="cpu", dtype="float32")
    matching = models.load_model("shapes-tiny", task="match", device="cpu", dtype="float32")
    matcher = Matcher(matching)
    scenes = shapes.make_scenes(args.count, split=args.split, seed=args.seed)
    truth = [s.caption() for s in scenes]
    greedy = Captioner(captioning, CaptionSettings())
    pools = {
        "sampled (top-p 0.9)": Captioner(captioning, CaptionSettings(**SETTINGS["sample, N=5"])),
        "5 best beams": Captioner(captioning, CaptionSettings(**SETTINGS["beam 5, N=5"])),
    }
    greedy_captions, best = [], {name: [] for name in pools}
    for start in range(0, len(scenes), 64):
        chunk = scenes[start : start + 64]
        cap_px, match_px = pixels(captioning, chunk), pixels(matching, chunk)
        greedy_captions += [row["caption"] for row in greedy(cap_px)]
        with torch.inference_mode():
            embeds = matching.image_embeds(match_px)
        for name, captioner in pools.items():
            rows = captioner(cap_px)
            pairs = [(n, text) for n, row in enumerate(rows) for text, _ in row["candidates"]]
            with torch.inference_mode():
                probs = matcher.itm(embeds, [n for n, _ in pairs], [t for _, t in pairs])
            for n in range(len(rows)):
                scored = [(p, t) for (m, t), p in zip(pairs, probs) if m == n]
                best[name].append(max(scored)[1])
    n = len(scenes)
    greedy_right = [g == t for g, t in zip(greedy_captions, truth)]
    print(f"{args.split} split, seed {args.seed}, {n} images; greedy exact match {sum(greedy_right) / n:.3f}")
    print("| candidates | best of 5 by ITM: exact match | beats greedy | loses to greedy |")
    print("|---|---|---|---|")
    for name, captions in best.items():
        right = [c == t for c, t in zip(captions, truth)]
        beats = sum(r and not g for r, g in zip(right, greedy_right)) / n
        loses = sum(g and not r for r, g in zip(right, greedy_right)) / n
        print(f"| {name} | {sum(right) / n:.3f} | {beats:.3f} | {loses:.3f} |")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mode", choices=("cost", "quality"), default="cost")
    parser.add_argument("--split", default="test")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--count", type=int, default=1000)
    parser.add_argument("--tiny-images", type=int, default=64)
    parser.add_argument("--base-images", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    cost(args) if args.mode == "cost" else quality(args)


if __name__ == "__main__":
    main()
