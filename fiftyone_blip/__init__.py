"""BLIP for FiftyOne datasets: captions, with more capabilities built on one engine.

    import fiftyone as fo
    import fiftyone_blip as fob

    dataset = fo.load_dataset("my-images")
    summary = fob.caption(dataset, model="Salesforce/blip-image-captioning-base", strategy="beam")
    print(summary)                       # counts and time
    print(fob.runs(dataset)[-1])         # the run record

Importing this package is cheap: torch and transformers load on first use.
"""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["caption", "runs", "load_model", "load_shapes_dataset", "ModelLoadError", "ImageDecodeError"]


def caption(
    samples,
    model: str | None = None,
    field: str = "caption",
    strategy: str = "greedy",
    num_beams: int | None = None,
    num_beam_groups: int = 2,
    diversity_penalty: float = 1.0,
    top_k: int = 50,
    top_p: float = 1.0,
    temperature: float = 1.0,
    seed: int = 0,
    min_new_tokens: int = 1,
    max_new_tokens: int = 30,
    repetition_penalty: float = 1.0,
    no_repeat_ngram_size: int = 0,
    prompt: str | None = None,
    resize: str = "squash",
    batch_size: int = 16,
    device: str = "auto",
    dtype: str = "auto",
    num_workers: int | None = None,
    shard: str | None = None,
    overwrite: bool = False,
    progress=True,
    language: str | None = None,
):
    """Captions every image of a dataset or view into a string field.

    Writes `field` (the caption), `{field}_confidence` (geometric mean of the
    token probabilities, 0..1), `{field}_error` (why a sample failed, or None)
    and `{field}_run` (a fingerprint of model and settings). Samples that
    already hold a caption from the same model and settings are skipped unless
    `overwrite` is set, so an interrupted run resumes where it stopped.

    Args:
        samples: a FiftyOne dataset or view.
        model: a hub id, a local directory or "shapes-tiny" (None:
            Salesforce/blip-image-captioning-base).
        field: the caption field ("caption").
        strategy: "greedy", "beam", "diverse-beam" or "sample" ("greedy").
        num_beams: beams, 1..10 (None: 3 for beam, 4 for diverse-beam).
        num_beam_groups: diverse-beam groups; must divide num_beams (2).
        diversity_penalty: diverse-beam penalty (1.0).
        top_k: sampling: keep the k most likely tokens, 0 for all (50).
        top_p: sampling: nucleus mass in (0, 1] (1.0).
        temperature: sampling temperature (1.0).
        seed: sampling seed (0).
        min_new_tokens: least generated tokens (1).
        max_new_tokens: most generated tokens, 1..128 (30).
        repetition_penalty: above 1 discourages repeats (1.0).
        no_repeat_ngram_size: forbid repeated n-grams of this size, 0 off (0).
        prompt: text the caption continues, e.g. "a picture of"; not repeated
            in the stored caption (None).
        resize: "squash", "center-crop" or "letterbox" ("squash").
        batch_size: images per model step, 1..1024 (16).
        device: "auto", "cpu", "cuda" or "mps" ("auto").
        dtype: "auto", "float32", "bfloat16", "float16" or "int8" ("auto":
            float32 on CPU, bfloat16 on GPUs; "int8": dynamic quantization, the
            fastest setting on CPU).
        num_workers: decode threads, 0 for inline (None: one per core, at
            most 8).
        shard: "I/N" to caption only shard I of N, for N parallel workers.
        overwrite: recompute samples already captioned with these settings.
        progress: True for a progress bar, False for none, or a callable
            `progress(done, total)`.
        language: caption language: None or "en" for the model's own
            English, else the code of an installed language adapter ("de");
            see `list_adapters` (None).

    Returns:
        an `engine.RunSummary` (done, failed, skipped, total, seconds).

    Raises:
        ValueError: an invalid setting, before any sample is touched; an
            unknown language (the message lists the installed ones).
        ModelLoadError: the model cannot be loaded.
    """
    from fiftyone_blip import captions, engine, images, models

    if language is not None:
        from fiftyone_blip import adapters

        adapters.check_language(language)

    settings = captions.CaptionSettings(
        strategy=strategy,
        num_beams=num_beams,
        num_beam_groups=num_beam_groups,
        diversity_penalty=diversity_penalty,
        top_k=top_k,
        top_p=top_p,
        temperature=temperature,
        seed=seed,
        min_new_tokens=min_new_tokens,
        max_new_tokens=max_new_tokens,
        repetition_penalty=repetition_penalty,
        no_repeat_ngram_size=no_repeat_ngram_size,
        prompt=prompt,
    )
    if resize not in images.RESIZE_MODES:
        raise ValueError(f"`resize` must be one of {images.RESIZE_MODES}, got {resize!r}")
    engine.check_run_options(field, batch_size, shard)
    loaded = models.load_model(model, task="caption", device=device, dtype=dtype)
    task = captions.caption_task(loaded, settings, field=field, resize=resize, language=language)
    return engine.run(
        samples,
        task,
        batch_size=batch_size,
        num_workers=num_workers,
        shard=shard,
        overwrite=overwrite,
        progress=progress,
    )


# --- language adapters (fiftyone_blip.adapters) ---------------------------------------------

__all__ += ["train_adapter", "list_adapters", "adapter_languages"]


def train_adapter(
    language: str,
    samples=None,
    caption_field: str | None = None,
    images_dir: str | None = None,
    captions_file: str | None = None,
    model: str | None = None,
    out: str | None = None,
    rank: int = 8,
    alpha: float = 16.0,
    learning_rate: float = 2e-3,
    epochs: int = 30,
    batch_size: int = 64,
    validation_fraction: float = 0.1,
    max_validation: int = 1000,
    patience: int = 3,
    max_added_tokens: int = 4000,
    seed: int = 0,
    device: str = "auto",
    threads: int | None = None,
    overwrite: bool = False,
    progress=True,
    log=print,
) -> dict:
    """Trains a LoRA language adapter for captions in `language` and installs it.

    The data is either a FiftyOne dataset or view (`samples`) with captions in
    `caption_field`, or a folder of images (`images_dir`) with a CSV or JSONL
    file of captions (`captions_file`, rows with `image` and `caption`). Only
    the text decoder adapts (LoRA plus new token rows); the vision encoder
    stays frozen. A held-out split gives early stopping and the manifest's
    metrics. See `fiftyone_blip.adapters.train_adapter` and
    `AdapterTrainingSettings` for the details.

    Args:
        language: language code the adapter is installed under ("de").
        samples: a FiftyOne dataset or view (None: use `images_dir`).
        caption_field: the samples' caption field, e.g. "caption_de".
        images_dir: a folder of images (with `captions_file`).
        captions_file: a .csv or .jsonl file of captions.
        model: the base captioner: hub id, local directory or "shapes-tiny"
            (None: Salesforce/blip-image-captioning-base).
        out: the adapter folder (None: `<registry>/<language>`, where the
            registry is `FIFTYONE_BLIP_ADAPTERS_DIR` or ~/.fiftyone-blip/adapters).
        rank, alpha, learning_rate, epochs, batch_size, validation_fraction,
        max_validation, patience, max_added_tokens, seed: training settings
            (defaults as in `AdapterTrainingSettings`).
        device: "auto", "cpu", "cuda" or "mps" ("auto").
        threads: CPU threads for torch (None: torch's default).
        overwrite: replace an installed adapter of the same language.
        progress: True for a progress bar, False for none, or a callable
            `progress(done, total)`.
        log: called with one line per epoch (print).

    Returns:
        the adapter's manifest (with its `path`).
    """
    from fiftyone_blip import adapters

    settings = adapters.AdapterTrainingSettings(
        rank=rank,
        alpha=alpha,
        learning_rate=learning_rate,
        epochs=epochs,
        batch_size=batch_size,
        validation_fraction=validation_fraction,
        max_validation=max_validation,
        patience=patience,
        max_added_tokens=max_added_tokens,
        seed=seed,
    )
    adapters.check_language(language)
    if (samples is None) == (images_dir is None):
        raise ValueError("pass either `samples` (with `caption_field`) or `images_dir` (with `captions_file`)")
    if samples is not None:
        if not caption_field:
            raise ValueError("`caption_field` is required with `samples`")
        pairs = adapters.pairs_from_dataset(samples, caption_field)
    else:
        if not captions_file:
            raise ValueError("`captions_file` is required with `images_dir`")
        pairs = adapters.pairs_from_folder(images_dir, captions_file)
    return adapters.train_adapter(
        pairs,
        language,
        model=model,
        out=out,
        settings=settings,
        device=device,
        overwrite=overwrite,
        threads=threads,
        progress=progress,
        log=log,
    )


def list_adapters(model: str | None = None) -> list[dict]:
    """Manifests of the installed language adapters (registry, then bundled), each with its `path`.

    Args:
        model: only adapters trained for this base model (None: all).
    """
    from fiftyone_blip import adapters

    return adapters.installed_adapters(model)


def adapter_languages(model: str | None = None) -> list[str]:
    """English ("en") plus the languages that installed adapters add to `model` (None: any model)."""
    from fiftyone_blip import adapters

    return adapters.languages(model)


# --- end of language adapters ------------------------------------------------------------------


def runs(dataset) -> list[dict]:
    """Returns the run records of a dataset, oldest first.

    Each record holds the capability, field, model (name, path, revision,
    dtype), settings, shard, package versions, start and end time, status, and
    counts of done / failed / skipped samples.
    """
    from fiftyone_blip import engine

    return engine.list_runs(dataset)


def load_model(name: str | None = None, task: str = "caption", device: str = "auto", dtype: str = "auto"):
    """Loads a BLIP model and processor; see `fiftyone_blip.models.load_model`."""
    from fiftyone_blip import models

    return models.load_model(name, task=task, device=device, dtype=dtype)


def load_shapes_dataset(name: str = "shapes-demo", count: int = 200, split: str = "test", **kwargs):
    """Builds (or loads) a persistent FiftyOne dataset of synthetic shapes images.

    See `fiftyone_blip.shapes.load_dataset`.
    """
    from fiftyone_blip import shapes

    return shapes.load_dataset(name=name, count=count, split=split, **kwargs)


def __getattr__(name):
    # Error types resolve lazily so that `import fiftyone_blip` stays cheap.
    if name == "ModelLoadError":
        from fiftyone_blip.models import ModelLoadError

        return ModelLoadError
    if name == "ImageDecodeError":
        from fiftyone_blip.images import ImageDecodeError

        return ImageDecodeError
    if name == "AdapterError":
        from fiftyone_blip.adapters import AdapterError

        return AdapterError
    raise AttributeError(f"module 'fiftyone_blip' has no attribute {name!r}")
