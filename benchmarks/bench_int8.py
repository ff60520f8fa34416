"""int8 on the CPU: per-token activation scales (the library's) against torch.ao's per-tensor ones.

    .venv/bin/python benchmarks/bench_int8.py               # BLIP-base sized, 1 thread
    .venv/bin/python benchmarks/bench_int8.py --size small  # a quick run

Builds a BLIP-base-sized captioner with random but informative weights
(`fiftyone_blip.random_models`) and captions the same images with fp32,
int8 with one activation scale per tensor (`torch.ao` dynamic quantization,
what the library used before) and int8 with one scale per token (the
library's `fiftyone_blip.int8`). Prints, per precision: CPU seconds per image
of a batch (every caption exactly `--tokens` new tokens; one thread, so CPU
time is the step's time on one core whatever else loads the machine), greedy
captions equal to fp32's, and captions equal alone (batch 1) and in the
batch. Random weights make near-ties common, so agreement with fp32 is also
measured where it means something: greedy captions of the trained shapes-tiny
captioner on `--shapes` held-out scenes, in batches of 16.
"""

from __future__ import annotations

import argparse
import dataclasses
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

from fiftyone_blip.random_models import build_random_blip


def images(count: int, size: int) -> list[np.ndarray]:
    """`count` different smooth random uint8 images at the model's input size."""
    from PIL import Image

    rng = np.random.default_rng(0)
    out = []
    for _ in range(count):
        small = rng.integers(0, 256, (6, 6, 3), dtype=np.uint8)
        out.append(np.asarray(Image.fromarray(small).resize((size, size), Image.Resampling.BICUBIC)))
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=("base", "small"), default="base")
    parser.add_argument("--images", type=int, default=6)
    parser.add_argument("--tokens", type=int, default=20, help="new tokens per caption in the timed runs")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--shapes", type=int, default=400, help="held-out shapes scenes for the agreement figure")
    args = parser.parse_args()

    import torch

    from fiftyone_blip import models
    from fiftyone_blip.captions import Captioner, CaptionSettings
    from fiftyone_blip.images import to_pixel_values

    torch.set_num_threads(args.threads)
    folder = Path(tempfile.mkdtemp(prefix="bench-int8-"))
    directory = build_random_blip(folder / "caption", "caption", args.size)
    fp32 = models.load_model(str(directory), "caption", device="cpu", dtype="float32", cached=False)
    per_token = models.load_model(str(directory), "caption", device="cpu", dtype="int8", cached=False)
    per_tensor = models.load_model(str(directory), "caption", device="cpu", dtype="float32", cached=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ao_model = torch.ao.quantization.quantize_dynamic(per_tensor.model, {torch.nn.Linear}, dtype=torch.qint8)
    per_tensor = dataclasses.replace(per_tensor, model=ao_model, dtype="int8")
    pixels = to_pixel_values(images(args.images, fp32.image_size))

    greedy = CaptionSettings()
    timed = CaptionSettings(min_new_tokens=args.tokens, max_new_tokens=args.tokens)
    rows, reference = [], None
    for name, loaded in (("fp32", fp32), ("int8 per-tensor (torch.ao)", per_tensor), ("int8 per-token", per_token)):
        captioner = Captioner(loaded, greedy)
        batch = [row["caption"] for row in captioner(pixels)]
        alone = [captioner(pixels[i : i + 1])[0]["caption"] for i in range(len(pixels))]
        reference = reference or alone
        Captioner(loaded, timed)(pixels[:1])  # warm-up
        start = time.process_time()
        Captioner(loaded, timed)(pixels)
        seconds = (time.process_time() - start) / len(pixels)
        same_as_fp32 = sum(a == b for a, b in zip(alone, reference))
        batch_free = sum(a == b for a, b in zip(alone, batch))
        lengths = sorted(len(c.split()) for c in alone)
        rows.append((name, seconds, same_as_fp32, batch_free, lengths))
    n = len(pixels)
    print(f"BLIP {args.size}, {n} images, batch {n}, {args.threads} thread(s), {args.tokens} new tokens timed")
    print(f"{'precision':28s} {'s/image':>8s} {'= fp32 (alone)':>15s} {'alone = batch':>14s}  caption lengths")
    for name, seconds, same, free, lengths in rows:
        print(f"{name:28s} {seconds:8.2f} {f'{same}/{n}':>15s} {f'{free}/{n}':>14s}  {lengths}")
    shapes_agreement(args.shapes)


def shapes_agreement(count: int) -> None:
    """Greedy captions of shapes-tiny equal to fp32's, per int8 variant, batches of 16."""
    import torch

    from fiftyone_blip import models
    from fiftyone_blip.captions import Captioner, CaptionSettings
    from fiftyone_blip.images import to_pixel_values
    from fiftyone_blip.shapes.data import make_scenes, render_scene

    fp32 = models.load_model("shapes-tiny", "caption", device="cpu", dtype="float32", cached=False)
    per_token = models.load_model("shapes-tiny", "caption", device="cpu", dtype="int8", cached=False)
    per_tensor = models.load_model("shapes-tiny", "caption", device="cpu", dtype="float32", cached=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ao_model = torch.ao.quantization.quantize_dynamic(per_tensor.model, {torch.nn.Linear}, dtype=torch.qint8)
    per_tensor = dataclasses.replace(per_tensor, model=ao_model, dtype="int8")
    preprocess = fp32.preprocessor()
    arrays = [preprocess.pixels_from_image(render_scene(s))[0] for s in make_scenes(count, split="test")]
    captions = {}
    for name, loaded in (("fp32", fp32), ("per-tensor", per_tensor), ("per-token", per_token)):
        captioner = Captioner(loaded, CaptionSettings())
        captions[name] = [
            row["caption"] for i in range(0, count, 16) for row in captioner(to_pixel_values(arrays[i : i + 16]))
        ]
    for name in ("per-tensor", "per-token"):
        same = sum(a == b for a, b in zip(captions[name], captions["fp32"]))
        print(f"shapes-tiny, {count} held-out scenes: int8 {name} captions equal to fp32's: {same}/{count}")


if __name__ == "__main__":
    main()
