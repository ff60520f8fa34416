"""Device benchmark of every capability's model step, runnable without FiftyOne or MongoDB.

    python benchmarks/bench_gpu.py --device cuda --out DIR            # full run, < 8 min on one H200
    python benchmarks/bench_gpu.py --device cpu --out DIR --smoke     # tiny models and counts, seconds

It needs torch, transformers, peft, numpy and Pillow, nothing else (no
FiftyOne, no MongoDB, no network), and writes `DIR/bench_gpu.json`.

What it measures, each with the library's own model step (not a copy of it):

- the image pipeline on the CPU: photo-like 640x480 JPEGs it writes itself,
  decoded and fitted to the model's input by `images.Preprocessor.pixels`,
  images/s with 1 thread and with one thread per core;
- per dtype (bf16 and fp16 on CUDA, fp32 on CPU), images/s and peak device
  memory of: captioning (greedy and beam 3, exactly 20 new tokens,
  `captions.Captioner`), ITC image embeddings (`embeddings.Embedder`), ITM + ITC
  scoring of one text per image (`mislabels.Matcher.score`), cross-attention word
  heatmaps (`word_heatmaps.HeatmapMaker`) and captioning through a LoRA
  language adapter (rank 8 on the decoder modules `adapters.TARGET_MODULES`
  names); BLIP-base-sized random weights (transformers' default `BlipConfig`);
- a batch-size sweep of greedy captioning in the first dtype;
- CUDA only, the decoding levers, each against plain greedy at one batch size:
  a static KV cache (`cache_implementation="static"`), `torch.compile` (CUDA
  graphs) of the text decoder over it, and `torch.compile` of the vision model;
- uint8 batches normalised on the device (`images.to_pixel_values`, pinned
  memory and non-blocking copies on CUDA) against float32 batches normalised on
  the CPU and copied;
- files to results: JPEG files -> decode threads -> model step -> results in
  memory (greedy captions, first dtype), through the engine's own decode loop;
  no database writes (there is no MongoDB on the device machine);
- agreement of the device with CPU fp32 on the bundled shapes-tiny models:
  greedy captions (English and the bundled German adapter; target >= 0.98
  identical) and ITC image embeddings (target cosine >= 0.999). With
  `--device cpu` this compares the CPU with itself: trivially equal, and the
  JSON says so.

Every timing runs whole batches for at least `--seconds` (after one warm-up
batch), so the run's length does not depend on the device's speed; a global
`--budget` stops starting new measurements and records what was skipped.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, str(Path(__file__).resolve().parent))  # sample_images, beside this file
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the package, from a checkout

NEW_TOKENS = 20
CAPTION_TARGET = 0.98
COSINE_TARGET = 0.999


class Budget:
    """Wall-clock budget of the whole run: measurements not started in time are recorded as skipped."""

    def __init__(self, seconds: float):
        self.start = time.perf_counter()
        self.seconds = seconds
        self.skipped: list[str] = []

    @property
    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def allows(self, name: str, reserve: float = 0.0) -> bool:
        if self.elapsed + reserve > self.seconds:
            self.skipped.append(name)
            print(f"skipped (time budget): {name}", flush=True)
            return False
        return True


# --- models --------------------------------------------------------------------------------------


def build_models(directory: Path, smoke: bool) -> dict[str, Path]:
    """A captioner and a retrieval model with random but informative weights (see
    `fiftyone_blip.random_models`): BLIP-base sized, or tiny with --smoke."""
    import torch
    from transformers import (
        BertTokenizerFast,
        BlipConfig,
        BlipForConditionalGeneration,
        BlipForImageTextRetrieval,
        BlipImageProcessor,
        BlipProcessor,
    )

    from fiftyone_blip.random_models import build_random_blip
    from fiftyone_blip.shapes.data import english_vocabulary

    if not smoke:
        return {task: build_random_blip(directory / task, task, "base") for task in ("caption", "match")}
    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + english_vocabulary() + ["[DEC]", "[ENC]"]
    tokenizer = BertTokenizerFast(vocab={w: i for i, w in enumerate(words)}, bos_token="[DEC]")
    size = 64
    vision = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2)
    vision.update(image_size=size, patch_size=16, initializer_range=0.02)
    text = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2)
    text.update(vocab_size=len(words), max_position_embeddings=64, encoder_hidden_size=32)
    config = BlipConfig(vision_config=vision, text_config=text, projection_dim=16, image_text_hidden_size=16)
    config.text_config.bos_token_id = tokenizer.convert_tokens_to_ids("[DEC]")
    config.text_config.sep_token_id = tokenizer.sep_token_id
    config.text_config.pad_token_id = tokenizer.pad_token_id
    processor = BlipProcessor(BlipImageProcessor(size={"height": size, "width": size}), tokenizer)
    paths = {}
    for task, cls in (("caption", BlipForConditionalGeneration), ("match", BlipForImageTextRetrieval)):
        target = directory / task
        if not (target / "config.json").exists():
            config.architectures = [cls.__name__]
            torch.manual_seed(0)
            cls(config).save_pretrained(target)
            processor.save_pretrained(target)
        paths[task] = target
    return paths


def load_bench_model(path, task: str, device: str, dtype: str, attention: str = "sdpa"):
    from fiftyone_blip import models

    return models.load_model(str(path), task=task, device=device, dtype=dtype, attention=attention)


def release(device: str) -> None:
    """Drops cached models, so that the next dtype starts with free device memory."""
    import gc

    import torch

    from fiftyone_blip import models

    models._load.cache_clear()
    gc.collect()
    if device == "cuda":
        torch.cuda.empty_cache()


def add_lora(loaded) -> None:
    """Puts a rank-8 LoRA adapter (nonzero, unmerged) on the decoder, as a language adapter does."""
    import warnings

    import torch
    from peft import get_peft_model

    from fiftyone_blip import adapters

    config = adapters.lora_config(adapters.AdapterTrainingSettings(), [], inference=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        peft_model = get_peft_model(loaded.model, config, adapter_name="bench")
    torch.manual_seed(1)
    with torch.no_grad():
        for name, parameter in peft_model.named_parameters():
            if "lora_B" in name:
                parameter.normal_(0.0, 1e-3)  # peft starts B at zero: an adapter that changes nothing
    peft_model.eval()


# --- timing ---------------------------------------------------------------------------------------


def synchronize(device: str) -> None:
    if device == "cuda":
        import torch

        torch.cuda.synchronize()


def time_step(run_batch, batch_size: int, device: str, seconds: float, min_batches: int) -> dict:
    """Images/s of `run_batch()` on one batch: one warm-up batch, then whole batches for `seconds`."""
    import torch

    run_batch()
    synchronize(device)
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    times = []
    start = time.perf_counter()
    while len(times) < min_batches or time.perf_counter() - start < seconds:
        t0 = time.perf_counter()
        run_batch()
        synchronize(device)
        times.append(time.perf_counter() - t0)
    row = {
        "batch_size": batch_size,
        "batches": len(times),
        "images_per_s": round(batch_size / statistics.median(times), 2),
        "median_batch_s": round(statistics.median(times), 5),
    }
    if device == "cuda":
        row["peak_memory_mib"] = round(torch.cuda.max_memory_allocated() / 2**20)
    return row


def measured(name: str, function, errors: dict):
    """Runs one measurement; an error (e.g. out of memory) is recorded, not fatal."""
    try:
        result = function()
        print(f"{name}: {result}", flush=True)
        return result
    except Exception as error:  # one failing lever must not lose the other figures
        errors[name] = f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"
        print(f"{name}: FAILED {errors[name]}", flush=True)
        if "out of memory" in str(error).lower():
            release_cuda()
        return None


def release_cuda() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()


class _ExtraGenerateKwargs:
    """CaptionSettings with extra `generate()` arguments (a decoding lever), everything else unchanged."""

    def __init__(self, settings, **extra):
        self._settings = settings
        self._extra = extra

    def __getattr__(self, name):
        return getattr(self._settings, name)

    def generate_kwargs(self) -> dict:
        return {**self._settings.generate_kwargs(), **self._extra}


# --- the parts of the run -------------------------------------------------------------------------


def image_pipeline(paths: list[str], size: int, seconds: float) -> dict:
    """Images/s of decode + fit to uint8 on the CPU, 1 thread and one per core."""
    import concurrent.futures

    from transformers import BlipImageProcessor

    from fiftyone_blip.images import Preprocessor

    preprocess = Preprocessor(BlipImageProcessor(size={"height": size, "width": size}), size, "squash")
    cores = os.cpu_count() or 1
    result = {"source": "640x480 JPEG", "input": f"{size}x{size} squash, uint8", "cores": cores}
    for threads in sorted({1, cores}):
        with concurrent.futures.ThreadPoolExecutor(threads) as pool:
            list(pool.map(preprocess.pixels, paths[: 2 * threads]))  # warm the page cache and the pool
            done, start = 0, time.perf_counter()
            cpu0 = time.process_time()
            while done < len(paths) or time.perf_counter() - start < seconds:
                done += sum(1 for _ in pool.map(preprocess.pixels, paths))
            wall, cpu = time.perf_counter() - start, time.process_time() - cpu0
        result[f"threads_{threads}"] = {
            "images_per_s": round(done / wall, 1),
            "images_per_cpu_s": round(done / cpu, 1) if cpu else None,
        }
    return result


def step_functions(paths: dict, device: str, dtype: str, size: int, batch: int, seconds: float, budget, errors):
    """Images/s and peak memory of each capability's model step in one dtype."""
    import torch

    from fiftyone_blip import captions, embeddings, images, mislabels, word_heatmaps

    torch.manual_seed(0)
    uint8 = np.random.default_rng(0).integers(0, 256, size=(batch, size, size, 3), dtype=np.uint8)
    mean, std = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)

    def pixels():
        # what a step gets from the decode threads, normalised on the device
        return images.to_pixel_values(uint8, device, dtype, mean, std)

    texts = ["a photo of a red circle on the left"] * batch
    rows = {}
    min_batches = 2
    fixed = dict(min_new_tokens=NEW_TOKENS, max_new_tokens=NEW_TOKENS)

    caption_model = load_bench_model(paths["caption"], "caption", device, dtype)
    greedy = captions.Captioner(caption_model, captions.CaptionSettings(**fixed))
    beam = captions.Captioner(caption_model, captions.CaptionSettings(strategy="beam", num_beams=3, **fixed))
    for name, captioner in (("caption_greedy", greedy), ("caption_beam3", beam)):
        if budget.allows(f"{dtype} {name}"):
            rows[name] = measured(
                f"{dtype} {name}",
                lambda c=captioner: time_step(lambda: c(pixels()), batch, device, seconds, min_batches),
                errors,
            )
    match_model = load_bench_model(paths["match"], "match", device, dtype)
    embedder, matcher = embeddings.Embedder(match_model), mislabels.Matcher(match_model)
    if budget.allows(f"{dtype} itc_embeddings"):
        rows["itc_embeddings"] = measured(
            f"{dtype} itc_embeddings",
            lambda: time_step(lambda: embedder.embed_images(pixels()), batch, device, seconds, min_batches),
            errors,
        )
    if budget.allows(f"{dtype} itm_scores"):
        rows["itm_scores"] = measured(
            f"{dtype} itm_scores",
            lambda: time_step(lambda: matcher.score(pixels(), texts), batch, device, seconds, min_batches),
            errors,
        )
    if budget.allows(f"{dtype} heatmaps"):
        # heatmaps read attention weights: the captioner loaded with eager attention
        eager = load_bench_model(paths["caption"], "caption", device, dtype, attention="eager")
        maker = word_heatmaps.HeatmapMaker(eager, word_heatmaps.HeatmapSettings())
        rows["heatmaps"] = measured(
            f"{dtype} heatmaps",
            lambda: time_step(lambda: maker(pixels(), texts), batch, device, seconds, min_batches),
            errors,
        )
    if budget.allows(f"{dtype} language_adapter"):

        def adapter_step():
            add_lora(caption_model)  # the cached captioner is changed in place: released below
            return time_step(lambda: greedy(pixels()), batch, device, seconds, min_batches)

        rows["language_adapter_greedy"] = measured(f"{dtype} language_adapter", adapter_step, errors)
    release(device)
    return rows


def batch_sweep(paths: dict, device: str, dtype: str, size: int, sizes: list[int], seconds: float, budget, errors):
    import torch

    from fiftyone_blip import captions, images

    loaded = load_bench_model(paths["caption"], "caption", device, dtype)
    captioner = captions.Captioner(
        loaded, captions.CaptionSettings(min_new_tokens=NEW_TOKENS, max_new_tokens=NEW_TOKENS)
    )
    rows = []
    for batch in sizes:
        if not budget.allows(f"sweep batch {batch}"):
            break
        uint8 = torch.randint(0, 256, (batch, size, size, 3), dtype=torch.uint8)
        row = measured(
            f"{dtype} greedy batch {batch}",
            lambda u=uint8, b=batch: time_step(
                lambda: captioner(images.to_pixel_values(u, device, dtype)), b, device, seconds, 2
            ),
            errors,
        )
        if row is None:
            break  # a larger batch will not fit either
        rows.append(row)
    release(device)
    return rows


def compiled_step(module, run, batch, device, seconds, reference, **compile_options):
    """A timing step of `run` with `module.forward` compiled (its first call compiles); the forward is restored after."""

    def step():
        import torch

        original = module.forward
        module.forward = torch.compile(original, **compile_options)
        try:
            t0 = time.perf_counter()
            run()  # compiles
            compile_s = time.perf_counter() - t0
            row = time_step(run, batch, device, seconds, 2)
            row["compile_s"] = round(compile_s, 1)
            row["same_captions_as_dynamic"] = agreement_rate(reference, run())
            return row
        finally:
            module.forward = original

    return step


def decoding_levers(paths: dict, device: str, dtype: str, size: int, batch: int, seconds: float, budget, errors):
    """CUDA only: a static KV cache and torch.compile over it, against plain greedy, same batch."""
    import torch

    from fiftyone_blip import captions, images

    loaded = load_bench_model(paths["caption"], "caption", device, dtype)
    settings = captions.CaptionSettings(min_new_tokens=NEW_TOKENS, max_new_tokens=NEW_TOKENS)
    uint8 = torch.randint(0, 256, (batch, size, size, 3), dtype=torch.uint8)
    pixels = images.to_pixel_values(uint8, device, dtype)
    rows = {}
    plain = captions.Captioner(loaded, settings)
    reference = plain(pixels)
    rows["dynamic_cache"] = measured(
        "lever dynamic cache", lambda: time_step(lambda: plain(pixels), batch, device, seconds, 2), errors
    )
    static = captions.Captioner(loaded, settings)
    # the cache holds the prompt and every new token (generate sizes it one short for BLIP)
    static.settings = _ExtraGenerateKwargs(settings, cache_implementation="static", max_cache_len=NEW_TOKENS + 8)
    if budget.allows("lever static cache", reserve=30):

        def static_step():
            row = time_step(lambda: static(pixels), batch, device, seconds, 2)
            row["same_captions_as_dynamic"] = agreement_rate(reference, static(pixels))
            return row

        rows["static_cache"] = measured("lever static cache", static_step, errors)
    if rows.get("static_cache") is None:
        # Measured on the CPU with transformers 5.24: BLIP's text decoder writes past the
        # static cache's end ("index_copy_(): index N is out of bounds"), whatever its length.
        rows["static_cache_compiled"] = "not measured: the static cache failed (see errors)"
    elif budget.allows("lever static cache + torch.compile", reserve=120):
        decoder = loaded.model.text_decoder
        step = compiled_step(decoder, lambda: static(pixels), batch, device, seconds, reference, mode="reduce-overhead")
        rows["static_cache_compiled"] = measured("lever static cache + torch.compile", step, errors)
    if budget.allows("lever torch.compile of the vision model", reserve=120):
        # fixed input shape: one compile
        step = compiled_step(loaded.model.vision_model, lambda: plain(pixels), batch, device, seconds, reference)
        rows["vision_compiled"] = measured("lever torch.compile of the vision model", step, errors)
    base = (rows.get("dynamic_cache") or {}).get("images_per_s")
    for row in rows.values():
        if isinstance(row, dict) and base:
            row["speedup_over_dynamic"] = round(row["images_per_s"] / base, 3)
    release(device)
    return rows


def agreement_rate(a: list[dict], b: list[dict]) -> float:
    return round(sum(x["caption"] == y["caption"] for x, y in zip(a, b)) / max(1, len(a)), 4)


def transfer_lever(device: str, dtype: str, size: int, batch: int, seconds: float) -> dict:
    """uint8 to the device and normalised there, against float32 normalised on the CPU and copied."""
    import torch

    from fiftyone_blip import images

    arrays = list(np.random.default_rng(0).integers(0, 256, size=(batch, size, size, 3), dtype=np.uint8))
    mean, std = (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)
    scale, shift = (1 / 255) / np.float32(0.5), np.float32(1.0)

    def cpu_floats():
        floats = np.stack(
            [np.ascontiguousarray((a.astype(np.float32) * scale - shift).transpose(2, 0, 1)) for a in arrays]
        )
        return torch.from_numpy(floats).to(device, dtype=getattr(torch, dtype))

    def device_uint8():
        return images.to_pixel_values(arrays, device, dtype, mean, std)

    same = float((cpu_floats().float() - device_uint8().float()).abs().max())
    return {
        "float32_normalised_on_cpu": time_step(cpu_floats, batch, device, seconds, 3),
        "uint8_normalised_on_device": time_step(device_uint8, batch, device, seconds, 3),
        "max_abs_difference": same,
    }


def files_to_results(paths: dict, files: list[str], device: str, dtype: str, batch: int, seconds: float) -> dict:
    """JPEG files -> the engine's decode threads -> greedy captions in memory (no database)."""
    from fiftyone_blip import captions, engine
    from fiftyone_blip.images import Preprocessor

    loaded = load_bench_model(paths["caption"], "caption", device, dtype)
    captioner = captions.Captioner(
        loaded, captions.CaptionSettings(min_new_tokens=NEW_TOKENS, max_new_tokens=NEW_TOKENS)
    )
    preprocess = Preprocessor(loaded.processor.image_processor, loaded.image_size, "squash")
    workers = os.cpu_count() or 1

    def step(inputs):
        return captioner(preprocess.to_pixel_values(inputs, device, dtype))

    step([preprocess.pixels(f)[0] for f in files[:batch]])  # warm-up
    synchronize(device)
    done, results, start = 0, 0, time.perf_counter()
    while done == 0 or time.perf_counter() - start < seconds:
        items = [(str(i), None, f) for i, f in enumerate(files)]
        pending: list = []
        for _sid, _stamp, pixels, error in engine.decoded_in_order(
            items, lambda f: preprocess.pixels(f)[0], workers, max(2 * batch, 4 * workers)
        ):
            if error is not None:
                raise RuntimeError(error)
            pending.append(pixels)
            if len(pending) == batch:
                results += len(step(pending))
                pending = []
        if pending:
            results += len(step(pending))
        done += len(items)
    synchronize(device)
    wall = time.perf_counter() - start
    release(device)
    return {
        "decode_threads": workers,
        "batch_size": batch,
        "images": done,
        "results": results,
        "images_per_s": round(done / wall, 2),
        "note": "files on disk to captions in memory; no database writes (no MongoDB on the device machine)",
    }


def agreement(device: str, dtype: str, count: int) -> dict:
    """Device (in `dtype`) against CPU fp32 on the bundled shapes-tiny models."""
    from fiftyone_blip import adapters, captions, embeddings, images
    from fiftyone_blip.shapes.data import make_scene

    settings = captions.CaptionSettings()

    def run(dev: str, dt: str):
        release(dev)
        caption_model = load_bench_model("shapes-tiny", "caption", dev, dt)
        match_model = load_bench_model("shapes-tiny", "match", dev, dt)
        preprocess = images.Preprocessor(caption_model.processor.image_processor, caption_model.image_size)
        arrays = [preprocess.pixels_from_image(make_scene(i, "test", size=192).render())[0] for i in range(count)]
        out = {"en": [], "de": [], "embeddings": []}
        for start in range(0, count, 64):
            chunk = arrays[start : start + 64]
            pixels = preprocess.to_pixel_values(chunk, dev, dt)
            out["en"] += [r["caption"] for r in captions.Captioner(caption_model, settings)(pixels)]
            tokenizer, _identity, activate = adapters.prepare(caption_model, "de")
            with activate():
                out["de"] += [r["caption"] for r in captions.Captioner(caption_model, settings, tokenizer)(pixels)]
            out["embeddings"].append(embeddings.Embedder(match_model).embed_images(pixels))
        out["embeddings"] = np.concatenate(out["embeddings"])
        adapters.forget_sessions()
        release(dev)
        return out

    reference = run("cpu", "float32")
    ours = run(device, dtype)
    cosines = (reference["embeddings"] * ours["embeddings"]).sum(1)
    result = {
        "compared": f"{device} {dtype} vs cpu float32",
        "trivial": device == "cpu" and dtype == "float32",
        "images": count,
        "caption_agreement_en": round(float(np.mean([a == b for a, b in zip(reference["en"], ours["en"])])), 4),
        "caption_agreement_de_adapter": round(float(np.mean([a == b for a, b in zip(reference["de"], ours["de"])])), 4),
        "embedding_cosine_min": round(float(cosines.min()), 6),
        "embedding_cosine_mean": round(float(cosines.mean()), 6),
        "targets": {"caption_agreement": CAPTION_TARGET, "embedding_cosine_min": COSINE_TARGET},
    }
    result["passed"] = bool(
        min(result["caption_agreement_en"], result["caption_agreement_de_adapter"]) >= CAPTION_TARGET
        and result["embedding_cosine_min"] >= COSINE_TARGET
    )
    return result


# --- main -----------------------------------------------------------------------------------------


def environment(device: str) -> dict:
    from importlib import metadata

    import torch

    info = {"python": platform.python_version(), "cpu_cores": os.cpu_count(), "torch_threads": torch.get_num_threads()}
    for package in ("torch", "transformers", "peft", "numpy", "pillow"):
        with contextlib.suppress(metadata.PackageNotFoundError):
            info[package] = metadata.version(package)
    info["device_name"] = torch.cuda.get_device_name() if device == "cuda" else platform.processor() or "cpu"
    if device == "cuda":
        free, total = torch.cuda.mem_get_info()
        info["device_memory_gib"] = round(total / 2**30, 1)
    return info


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", choices=("cuda", "cpu"), required=True)
    parser.add_argument("--out", required=True, help="folder for bench_gpu.json (created)")
    parser.add_argument("--smoke", action="store_true", help="tiny models and counts: seconds, for tests")
    parser.add_argument("--budget", type=float, default=None, help="wall-clock seconds for the run (420; smoke 120)")
    parser.add_argument("--seconds", type=float, default=None, help="timed seconds per measurement (3; smoke 0)")
    parser.add_argument("--workdir", default=None, help="models and JPEGs (a temporary folder)")
    args = parser.parse_args(argv)

    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: torch sees no CUDA device")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    smoke = args.smoke
    if smoke:
        torch.set_num_threads(1)  # tiny matrices: a second thread only waits on a shared machine
    budget = Budget(args.budget if args.budget is not None else (120 if smoke else 420))
    seconds = args.seconds if args.seconds is not None else (0.0 if smoke else 3.0)
    device = args.device
    dtypes = ["bfloat16", "float16"] if device == "cuda" else ["float32"]
    batch = 4 if smoke else (256 if device == "cuda" else 8)
    sweep = [2, 4] if smoke else ([32, 64, 128, 256, 512, 1024] if device == "cuda" else [4, 8])
    agreement_count = 8 if smoke else 256

    errors: dict[str, str] = {}
    result: dict = {
        "command": " ".join([Path(sys.argv[0]).name, *(argv if argv is not None else sys.argv[1:])]),
        "device": device,
        "smoke": smoke,
        "models": "tiny random BLIP (smoke)"
        if smoke
        else "BLIP-base-sized random weights (transformers' BlipConfig(), informative init: random_models.py)",
        "new_tokens": NEW_TOKENS,
        "environment": environment(device),
    }
    with tempfile.TemporaryDirectory(prefix="bench-gpu-") as scratch:
        work = Path(args.workdir or scratch)
        paths = build_models(work / ("models-smoke" if smoke else "models-base"), smoke)
        size = 64 if smoke else 384
        from sample_images import write_jpegs

        unique = write_jpegs(work / "jpegs", 8 if smoke else 128)
        files = unique * (1 if smoke else 8)
        print(f"models and {len(unique)} JPEGs ready in {budget.elapsed:.0f} s", flush=True)

        def save() -> None:
            # after every part, so that a run stopped from outside still leaves what it measured
            result["skipped_for_time"] = budget.skipped
            result["errors"] = errors
            result["fiftyone_imported"] = sys.modules.get("fiftyone") is not None
            result["pymongo_imported"] = sys.modules.get("pymongo") is not None
            result["wall_s"] = round(budget.elapsed, 1)
            (out / "bench_gpu.json").write_text(json.dumps(result, indent=2) + "\n")

        result["image_pipeline"] = measured("image pipeline", lambda: image_pipeline(files, 384, seconds), errors)
        save()
        result["steps"] = {}
        for dtype in dtypes:
            result["steps"][dtype] = measured(
                f"{dtype} steps",
                lambda d=dtype: step_functions(paths, device, d, size, batch, seconds, budget, errors),
                errors,
            )
            save()
        if budget.allows("batch sweep"):
            result["batch_sweep"] = {"dtype": dtypes[0], "step": "caption_greedy"}
            result["batch_sweep"]["rows"] = measured(
                "batch sweep",
                lambda: batch_sweep(paths, device, dtypes[0], size, sweep, seconds, budget, errors),
                errors,
            )
            save()
        result["transfer"] = measured(
            "uint8 vs float transfer", lambda: transfer_lever(device, dtypes[0], size, batch, seconds), errors
        )
        if device == "cuda":
            if budget.allows("decoding levers", reserve=60):
                result["decoding_levers"] = measured(
                    "decoding levers",
                    lambda: decoding_levers(paths, device, dtypes[0], size, batch, seconds, budget, errors),
                    errors,
                )
        else:
            result["decoding_levers"] = "not measured: CUDA only (static cache and CUDA graphs are GPU levers)"
        save()
        if budget.allows("files to results", reserve=30):
            result["files_to_results"] = measured(
                "files to results",
                lambda: files_to_results(paths, files, device, dtypes[0], batch, max(seconds, 0.0)),
                errors,
            )
            save()
        result["agreement"] = {}
        for dtype in dtypes:
            if budget.allows(f"agreement {dtype}"):
                result["agreement"][dtype] = measured(
                    f"agreement {dtype}", lambda d=dtype: agreement(device, d, agreement_count), errors
                )
        save()
    print(f"wrote {out / 'bench_gpu.json'} in {result['wall_s']} s", flush=True)
    return result


if __name__ == "__main__":
    main()
