"""Embedding throughput, BLIP-base sized, beside the captioning benchmark.

    .venv/bin/python benchmarks/bench_embed.py                    # 48 images, fp32 and int8
    .venv/bin/python benchmarks/bench_embed.py --count 200 --dtypes float32
    .venv/bin/python benchmarks/bench_embed.py --rerank 32          # re-ranking: first and later queries

Builds a BLIP-base-sized `BlipForImageTextRetrieval` with random weights
(transformers' default BlipConfig: ViT-B/16 at 384 px, a 12-layer BERT-base
text encoder, 256-d ITC projections; the compute is the real checkpoint's)
and embeds shapes scenes saved as 480x480 JPEG in a FiftyOne dataset with
`fiftyone_blip.embed` (the engine: decode threads, batches, bulk writes),
without building an index. Prints images/s per dtype, the model step's share
of the run, and the text-query embedding time.

`--rerank N`: the time of re-ranking N images for a text query
(`embeddings.rerank_scores`, what `search(rerank=True)` and the App's search
run on the shortlist) when the images are new to the model, and for a later
query over the same images (their vision states kept); medians of 3, each
with the states cleared first.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("FIFTYONE_DATABASE_VALIDATION", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).parent))


def build_blip_base_matcher(directory: Path) -> Path:
    """A BLIP-base-sized matcher with random weights and a full-size vocabulary."""
    import torch
    from transformers import BertTokenizerFast, BlipConfig, BlipForImageTextRetrieval, BlipImageProcessor, BlipProcessor

    from fiftyone_blip.shapes.data import english_vocabulary

    if (directory / "config.json").exists():
        return directory
    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + english_vocabulary()
    words += [f"w{i}" for i in range(30522 - len(words))] + ["[DEC]", "[ENC]"]
    tokenizer = BertTokenizerFast(vocab={w: i for i, w in enumerate(words)}, bos_token="[DEC]")
    processor = BlipProcessor(BlipImageProcessor(size={"height": 384, "width": 384}), tokenizer)
    config = BlipConfig()  # transformers' default: the BLIP-base architecture
    config.text_config.pad_token_id = tokenizer.pad_token_id
    config.architectures = ["BlipForImageTextRetrieval"]
    torch.manual_seed(0)
    BlipForImageTextRetrieval(config).save_pretrained(directory)
    processor.save_pretrained(directory)
    return directory


def main() -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--count", type=int, default=48)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--dtypes", nargs="+", default=["float32", "int8"])
    parser.add_argument("--workers", type=int, default=None)
    parser.add_argument("--rerank", type=int, default=0, help="time re-ranking N images (first and later query)")
    parser.add_argument("--workdir", default=os.path.join(tempfile.gettempdir(), "fiftyone-blip-bench"))
    args = parser.parse_args()

    import torch
    from bench_caption import make_dataset

    import fiftyone_blip as fob
    from fiftyone_blip import embeddings, models

    workdir = Path(args.workdir)
    model_dir = build_blip_base_matcher(workdir / "blip-base-matcher-random")
    dataset = make_dataset("bench-embed", args.count, workdir / "images-480")
    if args.rerank:
        return rerank_report(model_dir, dataset.limit(args.rerank).values("filepath"), args.batch_size)
    report = {"count": args.count, "batch_size": args.batch_size, "threads": torch.get_num_threads(), "runs": {}}
    for dtype in args.dtypes:
        models.load_model(str(model_dir), task="match", device="cpu", dtype=dtype)  # load outside the timing
        t0 = time.perf_counter()
        summary = fob.embed(
            dataset,
            model=str(model_dir),
            field=f"emb_{dtype}",
            brain_key=None,
            batch_size=args.batch_size,
            device="cpu",
            dtype=dtype,
            num_workers=args.workers,
            progress=False,
        )
        seconds = time.perf_counter() - t0
        report["runs"][dtype] = {
            "images_per_s": round(summary.done / seconds, 3),
            "seconds": round(seconds, 1),
            "model_seconds": round(summary.model_seconds, 1),
        }
        print(f"{dtype}: {summary.done / seconds:.3f} images/s ({summary})", flush=True)
    loaded = models.load_model(str(model_dir), task="match", device="cpu")
    embedder = embeddings.Embedder(loaded)
    embedder.embed_texts(["a warm-up query"])
    t0 = time.perf_counter()
    for _ in range(10):
        embedder.embed_texts(["a red circle on the left"])
    report["text_query_ms"] = round((time.perf_counter() - t0) * 100, 1)
    print(f"text query embedding: {report['text_query_ms']} ms")
    print(json.dumps(report))
    return report


def rerank_report(model_dir: Path, paths: list[str], batch_size: int) -> dict:
    """Seconds to re-rank `paths` for a first query and for a later one over the same images (medians of 3)."""
    import statistics

    import numpy as np

    from fiftyone_blip import embeddings, models

    loaded = models.load_model(str(model_dir), task="match", device="cpu")
    itc = np.zeros(len(paths))
    first, later = [], []
    for _ in range(3):
        loaded.vision_states.states.clear()
        loaded.vision_states.held = 0
        t0 = time.perf_counter()
        embeddings.rerank_scores(loaded, "a red circle on the left", paths, itc, batch_size)
        first.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        embeddings.rerank_scores(loaded, "a blue square at the top", paths, itc, batch_size)
        later.append(time.perf_counter() - t0)
    report = {
        "images": len(paths),
        "first_query_s": round(statistics.median(first), 2),
        "later_query_s": round(statistics.median(later), 2),
    }
    report["ratio"] = round(report["first_query_s"] / report["later_query_s"], 1)
    print(json.dumps(report))
    return report


if __name__ == "__main__":
    main()
