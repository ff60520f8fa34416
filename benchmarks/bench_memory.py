"""The engine's memory at 10k vs 100k samples, and its own rate, with a null model step.

    .venv/bin/python benchmarks/bench_memory.py                      # 10k and 100k
    .venv/bin/python benchmarks/bench_memory.py --counts 1000 10000  # smaller

Each count gets a dataset of tiny PNGs (16 distinct 8x8 files, repeated) and a
fresh process that runs `engine.run` with a task whose step returns a constant:
what is measured is the engine alone (paging, decode threads, bulk writes,
records). The process resets its peak RSS (VmHWM) after its imports, then
prints the RSS at the start of the run, the run's peak RSS and the samples/s
of the run; the parent prints both counts side by side and the
ratio of their peak RSS.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("FIFTYONE_DATABASE_VALIDATION", "false")


def peak_rss_mb() -> float:
    """Peak RSS since the last `reset_peak_rss` (VmHWM), else since the process started."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def reset_peak_rss() -> None:
    """Resets VmHWM to the current RSS (Linux): the run's peak is then not hidden by the imports'."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


def make_dataset(name: str, count: int, folder: Path):
    import fiftyone as fo
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(16):
        path = folder / f"{i:02d}.png"
        Image.new("RGB", (8, 8), (16 * i, 255 - 16 * i, 128)).save(path)
        paths.append(str(path))
    if fo.dataset_exists(name):
        fo.delete_dataset(name)
    dataset = fo.Dataset(name, persistent=True)
    for start in range(0, count, 10_000):
        chunk = range(start, min(count, start + 10_000))
        dataset.add_samples([fo.Sample(filepath=paths[i % 16]) for i in chunk], progress=False)
    return dataset


def child(name: str, workers: int | None) -> dict:
    import fiftyone as fo
    import numpy as np
    from PIL import Image

    from fiftyone_blip import engine
    from fiftyone_blip.settings import RunOptions

    dataset = fo.load_dataset(name)
    import tqdm  # noqa: F401  (imported by the engine's first progress bar otherwise)

    reset_peak_rss()
    before = peak_rss_mb()

    def prepare(path):
        with Image.open(path) as image:
            return np.asarray(image.convert("RGB"))

    task = engine.Task(
        capability="null",
        field="null_result",
        fields={"null_result": fo.IntField},
        settings={},
        identity={"model": "null"},
        prepare=prepare,
        step=lambda inputs: [{"null_result": 1} for _ in inputs],
    )
    t0 = time.perf_counter()
    summary = engine.run(dataset, task, RunOptions(batch_size=64, num_workers=workers, progress=False))
    seconds = time.perf_counter() - t0
    return {
        "samples": len(dataset),
        "done": summary.done,
        "seconds": round(seconds, 1),
        "samples_per_s": round(summary.done / seconds, 1),
        "rss_before_run_mb": round(before, 1),
        "peak_rss_mb": round(peak_rss_mb(), 1),
        "peak_rss_over_start_mb": round(peak_rss_mb() - before, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--counts", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--workers", type=int, default=None, help="decode threads (None: one per core)")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.workers)))
        return

    import fiftyone as fo

    results = []
    with tempfile.TemporaryDirectory() as folder:
        for count in args.counts:
            name = f"bench-engine-memory-{count}"
            make_dataset(name, count, Path(folder))
            command = [sys.executable, __file__, "--child", name]
            if args.workers is not None:
                command += ["--workers", str(args.workers)]
            try:
                out = subprocess.run(command, check=True, capture_output=True, text=True).stdout
            finally:
                fo.delete_dataset(name)
            results.append(json.loads(out.strip().splitlines()[-1]))
            print(json.dumps(results[-1]), flush=True)
    if len(results) >= 2:
        ratio = results[-1]["peak_rss_mb"] / results[0]["peak_rss_mb"]
        print(f"peak RSS {results[-1]['samples']} / {results[0]['samples']} samples: {ratio:.3f}")


if __name__ == "__main__":
    main()
