"""Captioning speed and memory, measured side by side in one run.

    .venv/bin/python benchmarks/bench_caption.py                 # speed (BLIP-base sized)
    .venv/bin/python benchmarks/bench_caption.py --mode levers   # each speed lever alone
    .venv/bin/python benchmarks/bench_caption.py --mode memory   # RSS at 1k vs 10k samples

Speed mode builds a BLIP-base-sized captioner (transformers' default BlipConfig:
ViT-B/16 at 384 px, a 12-layer BERT-base decoder, a 30,524-token vocabulary)
with random weights (the compute is the same as the real checkpoint's) and
times, on the same machine in the same process:

  a) the per-sample loop peers use: open, processor, generate, one image at a
     time, fp32;
  b) this project's engine at its best settings, from a FiftyOne dataset to
     stored captions.

Every caption is exactly 20 new tokens (min_new_tokens = max_new_tokens = 20).
It prints images/s for both and their ratio, the engine's end-to-end time over
its pure model time, and peak RSS; then the caption agreement of the fast
settings against fp32 greedy on the shapes-tiny model. Memory mode captions
1k and 10k shapes samples with shapes-tiny, each in a fresh process, and
prints their peak RSS.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("FIFTYONE_DATABASE_VALIDATION", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def build_blip_base(directory: Path) -> Path:
    """A BLIP-base-sized captioner with random weights and a full-size vocabulary."""
    import torch
    from transformers import (
        BertTokenizerFast,
        BlipConfig,
        BlipForConditionalGeneration,
        BlipImageProcessor,
        BlipProcessor,
    )

    from fiftyone_blip.shapes.data import english_vocabulary

    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + english_vocabulary()
    words += [f"w{i}" for i in range(30522 - len(words))] + ["[DEC]", "[ENC]"]
    tokenizer = BertTokenizerFast(vocab={w: i for i, w in enumerate(words)}, bos_token="[DEC]")
    processor = BlipProcessor(BlipImageProcessor(size={"height": 384, "width": 384}), tokenizer)
    config = BlipConfig()  # transformers' default: the BLIP-base architecture
    config.text_config.bos_token_id = tokenizer.convert_tokens_to_ids("[DEC]")
    config.text_config.sep_token_id = tokenizer.sep_token_id
    config.text_config.pad_token_id = tokenizer.pad_token_id
    config.architectures = ["BlipForConditionalGeneration"]
    torch.manual_seed(0)
    model = BlipForConditionalGeneration(config)
    model.save_pretrained(directory)
    processor.save_pretrained(directory)
    return directory


def make_dataset(name: str, count: int, folder: Path, size: int = 480):
    """`count` shapes images saved as JPEG, in a fresh FiftyOne dataset."""
    import fiftyone as fo

    from fiftyone_blip.shapes.data import make_scene

    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        path = folder / f"{i:06d}.jpg"
        if not path.exists():
            make_scene(i, "test", size=size).render().save(path, quality=90)
        paths.append(str(path))
    if fo.dataset_exists(name):
        fo.delete_dataset(name)
    dataset = fo.Dataset(name)
    dataset.add_samples([fo.Sample(filepath=p) for p in paths], progress=False)
    return dataset


def per_sample_loop(model_dir: Path, paths: list[str]) -> list[float]:
    """What peers do: processor + generate per image, fp32. Returns seconds per image."""
    import torch
    from PIL import Image
    from transformers import BlipForConditionalGeneration, BlipProcessor

    model = BlipForConditionalGeneration.from_pretrained(model_dir).eval()
    processor = BlipProcessor.from_pretrained(model_dir)
    times = []
    with torch.no_grad():
        for path in paths:
            t0 = time.perf_counter()
            image = Image.open(path).convert("RGB")
            inputs = processor(images=image, return_tensors="pt")
            out = model.generate(**inputs, min_new_tokens=20, max_new_tokens=20)
            processor.decode(out[0], skip_special_tokens=True)
            times.append(time.perf_counter() - t0)
    return times


def speed(args) -> dict:
    import torch

    import fiftyone_blip as fob
    from fiftyone_blip import models

    work = Path(args.workdir)
    model_dir = work / "blip-base-random"
    if not (model_dir / "config.json").exists():
        build_blip_base(model_dir)
    dataset = make_dataset("bench-caption", args.count, work / "images")
    paths = dataset.values("filepath")

    baseline = per_sample_loop(model_dir, paths[: args.baseline_count])
    baseline_rate = 1 / statistics.median(baseline)

    models._load.cache_clear()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    t0 = time.perf_counter()
    summary = fob.caption(
        dataset,
        model=str(model_dir),
        dtype="bfloat16",
        device=device,
        batch_size=args.batch_size,
        min_new_tokens=20,
        max_new_tokens=20,
        progress=False,
        overwrite=True,
    )
    end_to_end = time.perf_counter() - t0
    engine_rate = summary.done / end_to_end
    pure = pure_model_seconds(model_dir, paths, args.batch_size, device) * summary.done
    result = {
        "device": torch.cuda.get_device_name() if device == "cuda" else f"cpu ({os.cpu_count()} cores)",
        "torch_threads": torch.get_num_threads(),
        "images": summary.done,
        "baseline_images": len(baseline),
        "baseline_images_per_s": round(baseline_rate, 3),
        "engine_images_per_s": round(engine_rate, 3),
        "speedup": round(engine_rate / baseline_rate, 2),
        "engine_end_to_end_s": round(end_to_end, 1),
        "engine_step_s_inside_run": round(summary.model_seconds, 1),
        "pure_model_s": round(pure, 1),
        "end_to_end_over_pure_model": round(end_to_end / pure, 3),
        "batch_size": args.batch_size,
        "peak_rss_mb": round(peak_rss_mb()),
    }
    result["agreement_bf16_batched_vs_fp32_greedy"] = agreement(args)
    return result


def pure_model_seconds(model_dir: Path, paths: list[str], batch_size: int, device: str) -> float:
    """Seconds per image of the model step alone, on images decoded beforehand, same settings."""
    import torch

    from fiftyone_blip import captions, models
    from fiftyone_blip.images import Preprocessor

    loaded = models.load_model(str(model_dir), dtype="bfloat16", device=device)
    captioner = captions.Captioner(loaded, captions.CaptionSettings(min_new_tokens=20, max_new_tokens=20))
    preprocess = Preprocessor(loaded.processor.image_processor, loaded.image_size)
    count = min(len(paths), 4 * batch_size)
    pixels = torch.from_numpy(np.stack([preprocess(p)[0] for p in paths[:count]]))
    t0 = time.perf_counter()
    for start in range(0, count, batch_size):
        captioner(pixels[start : start + batch_size])
    return (time.perf_counter() - t0) / count


def agreement(args) -> float:
    """Caption agreement of the fast settings against fp32 greedy, on shapes-tiny."""
    import fiftyone_blip as fob

    dataset = fob.load_shapes_dataset("bench-agreement", count=args.agreement_count, split="test")
    fob.caption(
        dataset,
        model="shapes-tiny",
        field="fp32",
        batch_size=1,
        dtype="float32",
        device="cpu",
        progress=False,
        overwrite=True,
    )
    fob.caption(
        dataset,
        model="shapes-tiny",
        field="fast",
        batch_size=args.batch_size,
        dtype="bfloat16",
        device="cpu",
        progress=False,
        overwrite=True,
    )
    a, b = dataset.values("fp32"), dataset.values("fast")
    return round(sum(x == y for x, y in zip(a, b)) / len(a), 4)


def levers(args) -> dict:
    """Model-only time per image for each speed lever, toggled one at a time."""
    import torch

    from fiftyone_blip import captions, models

    work = Path(args.workdir)
    model_dir = work / "blip-base-random"
    if not (model_dir / "config.json").exists():
        build_blip_base(model_dir)
    settings = captions.CaptionSettings(min_new_tokens=20, max_new_tokens=20)
    torch.manual_seed(0)
    pixels = torch.randn(32, 3, 384, 384)
    configs = [
        ("fp32 eager batch 1", "float32", "eager", 1),
        ("fp32 eager batch 16", "float32", "eager", 16),
        ("fp32 sdpa batch 16", "float32", "sdpa", 16),
        ("bf16 eager batch 16", "bfloat16", "eager", 16),
        ("bf16 sdpa batch 8", "bfloat16", "sdpa", 8),
        ("bf16 sdpa batch 16", "bfloat16", "sdpa", 16),
        ("bf16 sdpa batch 32", "bfloat16", "sdpa", 32),
    ]
    rows = {}
    for label, dtype, attention, batch in configs:
        models._load.cache_clear()
        loaded = models.load_model(str(model_dir), dtype=dtype, attention=attention, device="cpu")
        captioner = captions.Captioner(loaded, settings)
        count = batch if batch > 1 else 4
        times = []
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            for start in range(0, count, batch):
                captioner(pixels[start : start + batch])
            times.append((time.perf_counter() - t0) / count)
        rows[label] = round(statistics.median(times), 3)
        print(f"{label:24} {rows[label]:.3f} s/image", flush=True)
    return {"seconds_per_image": rows, "torch_threads": torch.get_num_threads(), "repeats": args.repeats}


def memory_child(count: int) -> dict:
    import fiftyone_blip as fob

    dataset = fob.load_shapes_dataset(f"bench-memory-{count}", count=count, split="test")
    summary = fob.caption(dataset, model="shapes-tiny", batch_size=64, progress=False, overwrite=True)
    return {
        "samples": count,
        "done": summary.done,
        "seconds": round(summary.seconds, 1),
        "peak_rss_mb": round(peak_rss_mb()),
    }


def memory(args) -> dict:
    results = []
    for count in (1000, 10000):
        out = subprocess.run(
            [sys.executable, __file__, "--mode", "memory-child", "--count", str(count)],
            check=True,
            capture_output=True,
            text=True,
        )
        results.append(json.loads(out.stdout.strip().splitlines()[-1]))
    ratio = results[1]["peak_rss_mb"] / results[0]["peak_rss_mb"]
    return {"runs": results, "rss_10k_over_1k": round(ratio, 3)}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--mode", choices=("speed", "levers", "memory", "memory-child"), default="speed")
    parser.add_argument("--repeats", type=int, default=3, help="levers: timed repeats per setting (median)")
    parser.add_argument("--count", type=int, default=200, help="engine images (speed) or samples (memory-child)")
    parser.add_argument("--baseline-count", type=int, default=24, help="images timed in the per-sample loop")
    parser.add_argument("--agreement-count", type=int, default=500)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--workdir", default=os.path.join(tempfile.gettempdir(), "fiftyone-blip-bench"))
    args = parser.parse_args()
    if args.mode == "memory-child":
        print(json.dumps(memory_child(args.count)))
        return
    result = {"speed": speed, "levers": levers, "memory": memory}[args.mode](args)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
