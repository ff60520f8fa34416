"""Captioning speed and memory, measured side by side in one run.

    .venv/bin/python benchmarks/bench_caption.py                 # speed (BLIP-base sized)
    .venv/bin/python benchmarks/bench_caption.py --mode levers   # each speed lever alone
    .venv/bin/python benchmarks/bench_caption.py --mode memory   # RSS at 1k vs 10k samples
    .venv/bin/python benchmarks/bench_caption.py --mode pipeline # decode + resize + writes, null model

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
    """A BLIP-base-sized captioner with random but informative weights and a full-size vocabulary."""
    from fiftyone_blip.random_models import build_random_blip

    return build_random_blip(directory, "caption", "base")


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
    dtype = fast_dtype(device)
    # Pure model time: the same images, decoded beforehand, same model and settings;
    # one warm-up batch first, so that both it and the engine runs below are warm.
    pure = pure_model_seconds(model_dir, paths, args.batch_size, device, dtype)
    runs = {}
    for workers in args.workers:
        t0 = time.perf_counter()
        summary = fob.caption(
            dataset,
            model=str(model_dir),
            dtype=dtype,
            device=device,
            batch_size=args.batch_size,
            num_workers=workers,
            min_new_tokens=20,
            max_new_tokens=20,
            progress=False,
            overwrite=True,
        )
        end_to_end = time.perf_counter() - t0
        runs[f"decode_threads_{workers}"] = {
            "images_per_s": round(summary.done / end_to_end, 3),
            "end_to_end_s": round(end_to_end, 1),
            "step_s_inside_run": round(summary.model_seconds, 1),
            "end_to_end_over_pure_model": round(end_to_end / pure, 3),
        }
    best = max(runs.values(), key=lambda r: r["images_per_s"])
    result = {
        "device": torch.cuda.get_device_name() if device == "cuda" else f"cpu ({os.cpu_count()} cores)",
        "torch_threads": torch.get_num_threads(),
        "dtype": dtype,
        "batch_size": args.batch_size,
        "images": len(paths),
        "baseline_images": len(baseline),
        "baseline_images_per_s": round(baseline_rate, 3),
        "engine_best_images_per_s": best["images_per_s"],
        "speedup": round(best["images_per_s"] / baseline_rate, 2),
        "pure_model_s": round(pure, 1),
        "engine_runs": runs,
        "peak_rss_mb": round(peak_rss_mb()),
    }
    result["agreement_fast_vs_fp32_greedy"] = agreement(args, device)
    return result


def fast_dtype(device: str) -> str:
    """The fastest precision measured by `--mode levers`: int8 on CPU, bf16 on GPUs."""
    return "int8" if device == "cpu" else "bfloat16"


def pure_model_seconds(model_dir: Path, paths: list[str], batch_size: int, device: str, dtype: str) -> float:
    """Seconds for the model step alone over all images, decoded beforehand (after one warm-up batch)."""
    import torch

    from fiftyone_blip import captions, models
    from fiftyone_blip.images import Preprocessor

    loaded = models.load_model(str(model_dir), dtype=dtype, device=device)
    captioner = captions.Captioner(loaded, captions.CaptionSettings(min_new_tokens=20, max_new_tokens=20))
    preprocess = Preprocessor(loaded.processor.image_processor, loaded.image_size)
    pixels = torch.from_numpy(np.stack([preprocess(p)[0] for p in paths]))
    captioner(pixels[:batch_size])
    t0 = time.perf_counter()
    for start in range(0, len(pixels), batch_size):
        captioner(pixels[start : start + batch_size])
    return time.perf_counter() - t0


def agreement(args, device: str) -> float:
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
        dtype=fast_dtype(device),
        device=device,
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
        ("bf16 sdpa batch 16", "bfloat16", "sdpa", 16),
        ("int8 eager batch 16", "int8", "eager", 16),
        ("int8 sdpa batch 8", "int8", "sdpa", 8),
        ("int8 sdpa batch 16", "int8", "sdpa", 16),
        ("int8 sdpa batch 32", "int8", "sdpa", 32),
    ]
    if args.levers:
        configs = [c for c in configs if c[0] in args.levers]
    # Every model is loaded first and the repeats are interleaved across settings,
    # so that drift in the machine's load falls on all settings alike.
    captioners = {}
    for _label, dtype, attention, _batch in configs:
        if (dtype, attention) not in captioners:
            models._load.cache_clear()
            loaded = models.load_model(str(model_dir), dtype=dtype, attention=attention, device="cpu")
            captioners[dtype, attention] = captions.Captioner(loaded, settings)
    times = {label: [] for label, *_ in configs}
    for _ in range(args.repeats):
        for label, dtype, attention, batch in configs:
            captioner = captioners[dtype, attention]
            count = batch if batch > 1 else 4
            t0 = time.perf_counter()
            for start in range(0, count, batch):
                captioner(pixels[start : start + batch])
            times[label].append((time.perf_counter() - t0) / count)
    rows = {label: round(statistics.median(values), 3) for label, values in times.items()}
    for label, value in rows.items():
        print(f"{label:24} {value:.3f} s/image", flush=True)
    return {"seconds_per_image": rows, "torch_threads": torch.get_num_threads(), "repeats": args.repeats}


def memory_child(count: int) -> dict:
    """Captions an existing dataset in this fresh process; reports its peak RSS."""
    import fiftyone as fo

    import fiftyone_blip as fob

    dataset = fo.load_dataset(f"bench-memory-{count}")
    summary = fob.caption(dataset, model="shapes-tiny", batch_size=64, progress=False, overwrite=True)
    return {
        "samples": count,
        "done": summary.done,
        "seconds": round(summary.seconds, 1),
        "peak_rss_mb": round(peak_rss_mb()),
    }


def memory(args) -> dict:
    import fiftyone_blip as fob

    results = []
    for count in (1000, 10000):
        # Built here, so that the measured process holds only the captioning run.
        fob.load_shapes_dataset(f"bench-memory-{count}", count=count, split="test")
        out = subprocess.run(
            [sys.executable, __file__, "--mode", "memory-child", "--count", str(count)],
            check=True,
            capture_output=True,
            text=True,
        )
        results.append(json.loads(out.stdout.strip().splitlines()[-1]))
    ratio = results[1]["peak_rss_mb"] / results[0]["peak_rss_mb"]
    return {"runs": results, "rss_10k_over_1k": round(ratio, 3)}


def pipeline(args) -> dict:
    """What the engine can feed a model: the full engine with database writes, the model a no-op.

    Real 640x480 photo-like JPEGs in a FiftyOne dataset; each run decodes and
    fits every image (`images.Preprocessor.pixels`, uint8) in the engine's decode
    threads, calls a null step that returns one small integer per image, and
    writes it with the engine's bulk writes. Runs are interleaved across thread
    counts and repeated; medians are reported. Then, on one thread, where the
    time goes: open + decode, fit (resize), the uint8 array, and the engine with
    its writes alone (a prepare that returns a ready array).
    """
    import fiftyone as fo
    from transformers import BlipImageProcessor

    from fiftyone_blip import engine
    from fiftyone_blip.images import Preprocessor, fit_image, load_image
    from fiftyone_blip.settings import RunOptions

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from sample_images import write_jpegs

    work = Path(args.workdir)
    paths = write_jpegs(work / "photos", args.count)
    name = "bench-pipeline"
    if fo.dataset_exists(name):
        fo.delete_dataset(name)
    dataset = fo.Dataset(name)
    dataset.add_samples([fo.Sample(filepath=p) for p in paths], progress=False)
    processor = BlipImageProcessor(size={"height": 384, "width": 384})
    preprocess = Preprocessor(processor, 384, args.resize)

    def null_step(inputs):
        return [{"pipeline_check": int(x[0, 0, 0])} for x in inputs]

    def task(prepare):
        return engine.Task(
            capability="pipeline",
            field="pipeline_check",
            fields={"pipeline_check": fo.IntField},
            settings={"resize": args.resize},
            identity={"model": "null"},
            prepare=prepare,
            step=null_step,
        )

    def timed_run(prepare, workers: int) -> dict:
        options = RunOptions(batch_size=args.batch_size, num_workers=workers, overwrite=True, progress=False)
        cpu0, t0 = time.process_time(), time.perf_counter()
        summary = engine.run(dataset, task(prepare), options)
        wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
        assert summary.done == len(paths), summary
        return {"images_per_s": summary.done / wall, "images_per_cpu_s": summary.done / cpu}

    def decode_and_fit(path):
        return preprocess.pixels(path)[0]

    timed_run(decode_and_fit, 1)  # warm-up: page cache, the database, the thread pool
    runs = {workers: [] for workers in args.workers}
    for _ in range(args.repeats):
        for workers in args.workers:
            runs[workers].append(timed_run(decode_and_fit, workers))
    ready = preprocess.pixels(paths[0])[0]
    engine_only = [timed_run(lambda path: ready, 1) for _ in range(args.repeats)]

    def median_ms(function, inputs) -> float:
        """CPU ms of this thread per item (median of repeats): less sensitive to other load than wall time."""
        times = []
        for _ in range(args.repeats):
            t0 = time.thread_time()
            for item in inputs:
                function(item)
            times.append((time.thread_time() - t0) / len(inputs))
        return round(statistics.median(times) * 1000, 3)

    decode_ms = median_ms(lambda p: load_image(p, min_size=384), paths[:200])
    decoded = [load_image(p, min_size=384) for p in paths[:50]]
    fit_ms = median_ms(lambda image: fit_image(image, 384, args.resize, preprocess.fill), decoded)
    fitted = [fit_image(image, 384, args.resize, preprocess.fill)[0] for image in decoded]
    array_ms = median_ms(np.asarray, fitted)

    # One thread, CPU time of this thread (less sensitive to other load than wall time),
    # interleaved: BLIP's processor, the float32 path, the uint8 path in each resize mode.
    from PIL import Image

    preprocessors = {mode: Preprocessor(processor, 384, mode) for mode in ("squash", "center-crop", "letterbox")}
    contenders = {
        "blip_image_processor_float32": lambda p: processor(images=Image.open(p).convert("RGB"), return_tensors="np"),
        "preprocessor_float32_squash": preprocessors["squash"],
        **{f"preprocessor_uint8_{mode}": pre.pixels for mode, pre in preprocessors.items()},
    }
    cpu_ms = {name: [] for name in contenders}
    for _ in range(args.repeats):
        for label, function in contenders.items():
            t0 = time.thread_time()
            for path in paths[:100]:
                function(path)
            cpu_ms[label].append((time.thread_time() - t0) / 100 * 1000)

    def summary(rows: list[dict], key: str) -> float:
        return round(statistics.median(r[key] for r in rows), 1)

    result = {
        "images": len(paths),
        "source": "640x480 JPEG, quality 90",
        "resize": args.resize,
        "batch_size": args.batch_size,
        "repeats": args.repeats,
        "cores": os.cpu_count(),
    }
    for workers, rows in runs.items():
        result[f"decode_threads_{workers}"] = {
            "images_per_s_runs": [round(r["images_per_s"], 1) for r in rows],
            "images_per_s": summary(rows, "images_per_s"),
            "images_per_s_per_thread": round(summary(rows, "images_per_s") / workers, 1),
            "images_per_cpu_s": summary(rows, "images_per_cpu_s"),
        }
    one = result.get("decode_threads_1", {}).get("images_per_s")
    two = result.get("decode_threads_2", {}).get("images_per_s")
    if one and two:
        result["scaling_2_over_1"] = round(two / one, 2)
    result["one_thread_cpu_ms_per_image_by_stage"] = {
        "open_and_decode": decode_ms,
        "fit": fit_ms,
        "uint8_array": array_ms,
    }
    result["engine_and_writes_without_decode"] = {
        "wall_ms_per_image": round(1000 / summary(engine_only, "images_per_s"), 3),
        "process_cpu_ms_per_image": round(1000 / summary(engine_only, "images_per_cpu_s"), 3),
    }
    result["one_thread_cpu_ms_per_image"] = {label: round(statistics.median(v), 3) for label, v in cpu_ms.items()}
    fo.delete_dataset(name)
    return result


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--mode", choices=("speed", "levers", "memory", "memory-child", "pipeline"), default="speed")
    parser.add_argument("--repeats", type=int, default=3, help="levers: timed repeats per setting (median)")
    parser.add_argument("--levers", nargs="+", default=None, help="levers: only these settings (by label)")
    parser.add_argument("--count", type=int, default=200, help="engine images (speed) or samples (memory-child)")
    parser.add_argument("--baseline-count", type=int, default=24, help="images timed in the per-sample loop")
    parser.add_argument("--agreement-count", type=int, default=500)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument(
        "--workers", type=int, nargs="+", default=None, help="decode threads to try (speed: 0 1 2; pipeline: 1 2)"
    )
    parser.add_argument("--resize", default="squash", help="pipeline: resize mode")
    parser.add_argument("--workdir", default=os.path.join(tempfile.gettempdir(), "fiftyone-blip-bench"))
    args = parser.parse_args()
    if args.workers is None:
        args.workers = [1, 2] if args.mode == "pipeline" else [0, 1, 2]
    if args.mode == "pipeline" and args.count == 200:
        args.count = 600  # about 5 s per run on one thread
    if args.mode == "memory-child":
        print(json.dumps(memory_child(args.count)))
        return
    result = {"speed": speed, "levers": levers, "memory": memory, "pipeline": pipeline}[args.mode](args)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
