"""Reduced-scale JPEG decoding (`fast_decode`): its speed, and how far it moves pixels and results.

    .venv/bin/python benchmarks/bench_fast_decode.py             # about 3 minutes, 1 thread
    .venv/bin/python benchmarks/bench_fast_decode.py --no-base   # without the BLIP-base-sized model

1. Decode + fit to the 384 px input, per image on one core, each way, for
   photo-like JPEGs (quality 90) of 640x480, 2000x1500 and 4000x3000; and how
   the fitted uint8 pixels differ from a full decode (the processor's pixels).
2. On shapes-tiny (64 px input): held-out shapes scenes upscaled to 2000x1500
   JPEGs, embedded and captioned each way: embedding cosine and caption
   agreement between the two.
3. On a BLIP-base-sized matcher with random but informative weights
   (`fiftyone_blip.random_models`), the image embedding at 384 px of 16
   photo-like 2000x1500 JPEGs each way.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

SIZES = ((640, 480), (2000, 1500), (4000, 3000))


def photo_like(width: int, height: int, seed: int) -> Image.Image:
    """Smooth random colour fields with scattered sharp dots: compresses like a photo."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (height // 40 + 2, width // 40 + 2, 3), dtype=np.uint8)
    smooth = np.asarray(Image.fromarray(small).resize((width, height), Image.Resampling.BICUBIC))
    return Image.fromarray(smooth ^ ((rng.random((height, width, 1)) < 0.01).astype(np.uint8) * 255))


def median_ms(function, items, repeats: int) -> float:
    """Median CPU time of this thread per call: one core's time, whatever else loads the machine."""
    times = []
    for _ in range(repeats):
        for item in items:
            start = time.thread_time()
            function(item)
            times.append(time.thread_time() - start)
    return 1000 * statistics.median(times)


def decode_figures(folder: Path, processor) -> None:
    from fiftyone_blip.images import Preprocessor

    exact, fast = Preprocessor(processor, 384), Preprocessor(processor, 384, fast_decode=True)
    print("decode + fit to 384x384, median CPU ms per image (one core); fitted uint8 pixels fast vs exact")
    print(
        f"{'JPEG':>10s} {'exact ms':>9s} {'fast ms':>8s} {'speed-up':>8s} {'decoded at':>11s} {'max diff':>8s} "
        f"{'mean diff':>9s} {'differ':>7s}"
    )
    for width, height in SIZES:
        paths = []
        for seed in range(3):
            path = folder / f"photo-{width}-{seed}.jpg"
            photo_like(width, height, seed).save(path, quality=90)
            paths.append(str(path))
        repeats = 5 if width < 4000 else 2
        exact_ms = median_ms(exact.pixels, paths, repeats)
        fast_ms = median_ms(fast.pixels, paths, repeats)
        diffs = [np.abs(exact.pixels(p)[0].astype(int) - fast.pixels(p)[0].astype(int)) for p in paths]
        with Image.open(paths[0]) as image:
            image.draft("RGB", (384, 384))
            scale = f"{image.size[0]}x{image.size[1]}"
        print(
            f"{width}x{height:<5d} {exact_ms:9.1f} {fast_ms:8.1f} {exact_ms / fast_ms:7.1f}x {scale:>11s} "
            f"{max(int(d.max()) for d in diffs):8d} {np.mean([d.mean() for d in diffs]):9.2f} "
            f"{np.mean([(d > 0).mean() for d in diffs]):7.1%}"
        )


def scene_jpegs(folder: Path, count: int) -> list[str]:
    from fiftyone_blip.shapes.data import make_scenes, render_scene

    paths = []
    for i, scene in enumerate(make_scenes(count, split="test")):
        path = folder / f"scene-{i}.jpg"
        render_scene(scene).resize((2000, 1500), Image.Resampling.BICUBIC).save(path, quality=90)
        paths.append(str(path))
    return paths


def result_figures(name: str, paths: list[str], caption_model, match_model) -> None:
    import torch

    from fiftyone_blip.captions import Captioner, CaptionSettings
    from fiftyone_blip.embeddings import Embedder

    loaded_match = match_model
    exact, fast = loaded_match.preprocessor(), loaded_match.preprocessor(fast_decode=True)
    embedder = Embedder(loaded_match)
    cosines = []
    for start in range(0, len(paths), 16):
        chunk = paths[start : start + 16]
        a = embedder.embed_images(exact.to_pixel_values([exact.pixels(p)[0] for p in chunk]))
        b = embedder.embed_images(fast.to_pixel_values([fast.pixels(p)[0] for p in chunk]))
        cosines += list((a * b).sum(-1))
    line = f"{name}: {len(paths)} 2000x1500 JPEGs; embedding 1 - cosine fast vs exact: max {1 - min(cosines):.2e}"
    line += f", median {1 - statistics.median(cosines):.2e}"
    if caption_model is not None:
        captioner = Captioner(caption_model, CaptionSettings())
        exact, fast = caption_model.preprocessor(), caption_model.preprocessor(fast_decode=True)
        same = 0
        with torch.inference_mode():
            for start in range(0, len(paths), 16):
                chunk = paths[start : start + 16]
                a = captioner(exact.to_pixel_values([exact.pixels(p)[0] for p in chunk]))
                b = captioner(fast.to_pixel_values([fast.pixels(p)[0] for p in chunk]))
                same += sum(x["caption"] == y["caption"] for x, y in zip(a, b))
        line += f"; captions equal: {same}/{len(paths)}"
    print(line)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenes", type=int, default=200, help="shapes scenes for the shapes-tiny figures")
    parser.add_argument("--no-base", dest="base", action="store_false", help="skip the BLIP-base-sized figures")
    args = parser.parse_args()

    import torch

    from fiftyone_blip import models
    from fiftyone_blip.random_models import build_random_blip

    torch.set_num_threads(1)
    folder = Path(tempfile.mkdtemp(prefix="bench-fast-decode-"))
    caption = models.load_model("shapes-tiny", "caption", device="cpu")
    match = models.load_model("shapes-tiny", "match", device="cpu")
    decode_figures(folder, caption.processor.image_processor)
    paths = scene_jpegs(folder, args.scenes)
    result_figures("shapes-tiny (64 px input)", paths, caption, match)
    if args.base:
        directory = build_random_blip(folder / "base-match", "match", "base")
        base = models.load_model(str(directory), "match", device="cpu")
        photos = []
        for seed in range(16):
            photos.append(str(folder / f"photo-base-{seed}.jpg"))
            photo_like(2000, 1500, 100 + seed).save(photos[-1], quality=90)
        result_figures("BLIP-base-sized random matcher (384 px input), photo-like", photos, None, base)


if __name__ == "__main__":
    main()
