"""BLIP for FiftyOne datasets: captions, search, label QA and heatmaps, all on one engine.

    import fiftyone as fo
    import fiftyone_blip as fob

    dataset = fo.load_dataset("my-images")
    summary = fob.caption(dataset, model="Salesforce/blip-image-captioning-base", strategy="beam")
    print(summary)                       # counts and time
    fob.caption(dataset, language="de", field="caption_de")     # with a language adapter
    fob.embed(dataset)                                          # embeddings + similarity index
    fob.search(dataset, "a dog on a beach", k=20)
    fob.find_mislabels(dataset, label_field="ground_truth")     # label QA
    fob.heatmaps(dataset)                                       # where it looked, per word
    print(fob.runs(dataset)[-1])         # the run record

Importing this package is cheap: torch and transformers load on first use.
"""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = [
    "caption",
    "train_adapter",
    "list_adapters",
    "adapter_languages",
    "embed",
    "search",
    "find_mislabels",
    "flag_mislabels",
    "heatmaps",
    "write_heatmap_overlays",
    "runs",
    "load_model",
    "load_shapes_dataset",
    "ModelLoadError",
    "ImageDecodeError",
]


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
    from fiftyone_blip.settings import RunOptions

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
        RunOptions(
            resize=resize,
            batch_size=batch_size,
            device=device,
            dtype=dtype,
            num_workers=num_workers,
            shard=shard,
            overwrite=overwrite,
            progress=progress,
        ),
    )


# --- language adapters (fiftyone_blip.adapters) ---------------------------------------------


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


# ---- heatmaps: where the model looked, per caption word ----


def heatmaps(
    samples,
    mode: str = "cross-attention",
    model: str | None = None,
    field: str = "heatmap",
    text_field: str | None = "caption",
    text: str | None = None,
    layers=None,
    heads="all",
    token_positions: str = "both",
    normalize_heads: bool = False,
    map_size: int = 64,
    maps_dir: str | None = None,
    resize: str = "squash",
    batch_size: int = 8,
    device: str = "auto",
    dtype: str = "auto",
    num_workers: int | None = None,
    shard: str | None = None,
    overwrite: bool = False,
    progress=True,
):
    """Computes where BLIP looked for each word of a caption (or any text), per image.

    Writes `field` (an `fo.Heatmap` of the whole text, which the App overlays
    on the image), `{field}_words` (the words; word pieces merged),
    `{field}_maps` (a uint8 array of per-word maps) or, with `maps_dir`,
    `{field}_map_paths` (one PNG per word), `{field}_text` (the text),
    `{field}_probs` (cross-attention: each word's probability under the
    captioner) or `{field}_match` (gradcam: the ITM match probability), and
    `{field}_error` / `{field}_run`. Every map is mapped back onto the
    original image, whatever the resize mode.

    Args:
        samples: a FiftyOne dataset or view. With `text_field`, only samples
            that hold a text there are processed.
        mode: "cross-attention" (a teacher-forced pass of the captioner's
            decoder) or "gradcam" (gradient x cross-attention of the
            matcher's ITM head, as in BLIP's Grad-CAM) ("cross-attention").
        model: a hub id, a local directory or "shapes-tiny" (None:
            Salesforce's captioning base model for cross-attention, its ITM
            base model for gradcam).
        field: the heatmap field ("heatmap").
        text_field: the field holding each sample's text ("caption"). With
            None and no `text`, cross-attention mode captions each image
            itself (greedy) and explains that caption.
        text: one text for every image, e.g. a query (None).
        layers: "all", "last", an index or a list of indices of the text
            layers to average (None: all for cross-attention; for gradcam two
            thirds of the depth, at most the last but one).
        heads: "all" or a list of attention heads to average ("all").
        token_positions: cross-attention: average the decoder steps that read
            a word ("reading"), that predict it ("predicting") or both
            ("both").
        normalize_heads: standardise each head's map over the patches
            before averaging, so diffuse and peaked heads weigh the same (False).
        map_size: long side of stored maps in pixels, 8..1024 (64).
        maps_dir: a folder for per-word PNG maps (None: stored in the sample).
        resize: "squash", "center-crop" or "letterbox" ("squash").
        batch_size: images per model step (8).
        device: "auto", "cpu", "cuda" or "mps" ("auto").
        dtype: "auto", "float32", "bfloat16", "float16"; "int8" for
            cross-attention only ("auto").
        num_workers: decode threads, 0 for inline (None: one per core, at
            most 8).
        shard: "I/N" to process only shard I of N.
        overwrite: recompute samples already done with these settings.
        progress: True for a progress bar, False for none, or a callable
            `progress(done, total)`.

    Returns:
        an `engine.RunSummary`.

    Raises:
        ValueError: an invalid setting, before any sample is touched.
        ModelLoadError: the model cannot be loaded.
    """
    from fiftyone_blip import attention_maps as heatmap_module
    from fiftyone_blip.settings import RunOptions
    from fiftyone_blip import engine, images, models

    settings = heatmap_module.HeatmapSettings(
        mode=mode,
        layers=layers,
        heads=heads,
        token_positions=token_positions,
        normalize_heads=normalize_heads,
        map_size=map_size,
    )
    if resize not in images.RESIZE_MODES:
        raise ValueError(f"`resize` must be one of {images.RESIZE_MODES}, got {resize!r}")
    engine.check_run_options(field, batch_size, shard)
    if text is None and text_field is not None:
        engine.check_field_name(text_field)
        if text_field not in samples._dataset.get_field_schema():
            raise ValueError(f"`text_field` {text_field!r} is not a field of the dataset: caption the samples first")
        samples = samples.exists(text_field)
    if maps_dir:
        heatmap_module.writable_folder(maps_dir)
    loaded = models.load_model(
        model, task=heatmap_module.MODE_TASKS[mode], device=device, dtype=dtype, attention="eager"
    )
    task = heatmap_module.heatmap_task(
        loaded, settings, field=field, text_field=text_field, text=text, resize=resize, maps_dir=maps_dir
    )
    heatmap_module.declare_fields(samples._dataset, field, mode, maps_dir)
    return engine.run(
        samples,
        task,
        RunOptions(
            resize=resize,
            batch_size=batch_size,
            device=device,
            dtype=dtype,
            num_workers=num_workers,
            shard=shard,
            overwrite=overwrite,
            progress=progress,
        ),
    )


def write_heatmap_overlays(sample, output_dir: str, field: str = "heatmap", alpha: float = 0.5) -> list:
    """Writes a sample's image with each word's map over it, one PNG per word, for a report.

    Also writes `caption.png` (the whole caption's map). Returns the paths.
    """
    from fiftyone_blip import attention_maps as heatmap_module

    return heatmap_module.write_overlays(sample, output_dir, field=field, alpha=alpha)


def embed(
    samples,
    model: str | None = None,
    field: str = "blip_embedding",
    brain_key: str | None = "blip_sim",
    backend: str | None = None,
    resize: str = "squash",
    batch_size: int = 16,
    device: str = "auto",
    dtype: str = "auto",
    num_workers: int | None = None,
    shard: str | None = None,
    overwrite: bool = False,
    progress=True,
    **backend_kwargs,
):
    """Embeds every image in BLIP's contrastive (ITC) space and builds a similarity index.

    Writes `field` (a unit vector: normalized vision_proj of the image's CLS
    token; 256-d for BLIP-base), `{field}_error` and `{field}_run`, on the
    engine (batched, resumable, shardable; a bad file is recorded, not fatal).
    Then builds a FiftyOne brain similarity index `brain_key` over the dataset's
    samples embedded by this model, whose model embeds text prompts and
    reloads by name in later processes, so these work anywhere, at any time::

        dataset.sort_by_similarity("a red circle", k=25, brain_key="blip_sim")
        dataset.sort_by_similarity(sample_id, k=25, brain_key="blip_sim")

    and the App's text and image similarity search uses the index. Re-running
    resumes the embeddings and rebuilds the index.

    Args:
        samples: a FiftyOne dataset or view.
        model: a BlipForImageTextRetrieval hub id, local directory or
            "shapes-tiny" (None: Salesforce/blip-itm-base-coco).
        field: the embeddings field ("blip_embedding").
        brain_key: the similarity index to build ("blip_sim"); None embeds
            only. An existing index of this key built with the same model is
            replaced; one built with another model is an error.
        backend: the similarity backend: None for FiftyOne's default
            ("sklearn"), or one FiftyOne supports, e.g. "lancedb" (embedded,
            ``pip install lancedb``; set its location with
            FIFTYONE_BRAIN_SIMILARITY_LANCEDB_URI so later processes find it).
        resize: "squash", "center-crop" or "letterbox" ("squash").
        batch_size: images per model step, 1..1024 (16).
        device: "auto", "cpu", "cuda" or "mps" ("auto").
        dtype: "auto", "float32", "bfloat16", "float16" or "int8" ("auto").
        num_workers: decode threads, 0 for inline (None: one per core, at
            most 8).
        shard: "I/N" to embed only shard I of N. No index is built for a
            shard: when all shards are done, run `embed` once without `shard`
            (it skips what is embedded and builds the index).
        overwrite: recompute embeddings that already exist.
        progress: True for a progress bar, False for none, or a callable
            `progress(done, total)`.
        **backend_kwargs: options of the similarity backend (e.g.
            `metric="cosine"`, `table_name=...` for lancedb).

    Returns:
        an `engine.RunSummary` of the embedding run.

    Raises:
        ValueError: an invalid setting, or a brain key that holds another
            model's index, before any sample is touched.
        ModelLoadError: the model cannot be loaded.
    """
    from fiftyone_blip import embeddings, engine, images, models
    from fiftyone_blip.settings import RunOptions

    if resize not in images.RESIZE_MODES:
        raise ValueError(f"`resize` must be one of {images.RESIZE_MODES}, got {resize!r}")
    engine.check_run_options(field, batch_size, shard)
    if brain_key is not None:
        embeddings.check_brain_key(brain_key)
    stored_name = embeddings.stored_model_name(model)
    dataset = samples._root_dataset
    if brain_key is not None and brain_key in dataset.list_brain_runs():
        built_with = embeddings.index_model_name(dataset, brain_key)
        if built_with != stored_name:
            raise ValueError(
                f"brain key {brain_key!r} already holds an index built with model {built_with!r}; "
                f"choose another `brain_key` or delete it (dataset.delete_brain_run({brain_key!r}))"
            )
    loaded = models.load_model(model, task="match", device=device, dtype=dtype)
    task = embeddings.embedding_task(loaded, field=field, resize=resize)
    summary = engine.run(
        samples,
        task,
        RunOptions(
            resize=resize,
            batch_size=batch_size,
            device=device,
            dtype=dtype,
            num_workers=num_workers,
            shard=shard,
            overwrite=overwrite,
            progress=progress,
        ),
    )
    if brain_key is not None and shard is None:
        from fiftyone import ViewField as F

        embedded = dataset.match(F(task.run_field) == task.fingerprint)
        embeddings.build_index(
            embedded, stored_name, field=field, brain_key=brain_key, backend=backend, **backend_kwargs
        )
    return summary


def search(
    samples,
    query: str,
    k: int = 20,
    brain_key: str = "blip_sim",
    model: str | None = None,
    rerank: bool = False,
    shortlist: int | None = None,
    device: str = "auto",
):
    """The k samples most like a text query (or like a sample, given its id), best first.

    Text queries are embedded by the index's own model (BLIP's unimodal text
    encoder) and ranked by cosine similarity with the image embeddings. With
    `rerank`, the top `shortlist` are re-scored by BLIP's ITM head, BLIP's own
    retrieval recipe (ITC shortlist, ITM re-score): each is ranked by the ITM
    match logit plus the ITC cosine.

        hits = fob.search(dataset, "a red circle", k=20)
        hits = fob.search(dataset, "a blue square on the left", k=10, rerank=True)
        view = dataset.select([h.id for h in hits], ordered=True)

    Args:
        samples: a FiftyOne dataset or view (a view limits the results to it).
        query: a text, or the id of a sample for image-to-image search.
        k: how many results, 1 .. the number of samples searched (20).
        brain_key: the index built by `embed` ("blip_sim").
        model: the model you expect the index to use; an index built with
            another model is an error (None: the index's own model).
        rerank: re-score the ITC shortlist with the ITM head (text queries only).
        shortlist: how many ITC results the ITM head re-scores, >= k
            (None: max(4k, 128); BLIP's own Flickr30k evaluation re-ranks 128).
        device: where the query runs: "auto", "cpu", "cuda" or "mps" ("auto").

    Returns:
        a list of `Hit(id, filepath, score, itc, itm)`: `score` orders them
        (the ITC cosine, or with `rerank` the ITM logit + ITC cosine); `itm`
        is the ITM match probability when re-ranked.

    Raises:
        ValueError: an empty query, `k` outside 1 .. the number of samples, a
            brain key that does not exist or is not a fiftyone-blip index, or
            an index built with another model.
    """
    from fiftyone_blip import embeddings

    return embeddings.search(
        samples, query, k=k, brain_key=brain_key, model=model, rerank=rerank, shortlist=shortlist, device=device
    )


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


# --- label QA: mislabels by image-text matching ---------------------------------------------------------------


def find_mislabels(
    samples,
    label_field: str,
    model: str | None = None,
    field: str | None = None,
    template: str | None = None,
    classes: list[str] | None = None,
    margin: bool = True,
    itc: bool = False,
    method: str = "auto",
    threshold: float | None = None,
    percentile: float | None = None,
    top_k: int | None = None,
    level: str = "sample",
    tag: str = "mislabel",
    view_name: str | None = None,
    crop_padding: float | None = None,
    resize: str = "squash",
    batch_size: int = 16,
    device: str = "auto",
    dtype: str = "auto",
    num_workers: int | None = None,
    shard: str | None = None,
    overwrite: bool = False,
    progress=True,
) -> dict:
    """Scores how well each label fits its image with BLIP's ITM head, then flags likely mislabels.

    What is scored depends on the label field's type:

    - `Classification` / `Classifications`: the ITM probability of
      `template.format(label=...)` (e.g. "a photo of a dog"), and the margin
      against the best other class of the label set (zero-shot over `classes`,
      by default the classes present in `samples`);
    - `Detections`: the same per object, on its crop (the box grown by
      `crop_padding`);
    - a string field (free-text captions, including ones `caption()` wrote:
      a caption self-check): the ITM probability of the text.

    Stored, so that `flag_mislabels` can re-flag without the model: per label,
    attributes `{field}_itm`, `{field}_margin`, `{field}_itc`; per sample,
    `{field}` (the lowest ITM probability of its labels), `{field}_margin`,
    `{field}_itc`, `{field}_error`, `{field}_run`. Then flags as
    `flag_mislabels` does (default: mistakenness >= 0.5).

    Args:
        samples: a FiftyOne dataset or view.
        label_field: the field to check (Classification, Classifications,
            Detections or string).
        model: a BlipForImageTextRetrieval hub id, local directory or
            "shapes-tiny" (None: Salesforce/blip-itm-base-coco).
        field: where scores go (None: "{label_field}_match").
        template: the label prompt; must contain {label} (None: the model's
            default, "a photo of a {label}"; "a {label}" for shapes-tiny).
        classes: the label set for margins (None: the labels present).
        margin: compute margins against the best other class (True); costs
            one ITM pass per class and label.
        itc: also store ITC cosines (False).
        method, threshold, percentile, top_k, level, tag, view_name: see
            `flag_mislabels`.
        crop_padding: detections: box growth factor, >= 1 (None: 1.25; 3.0
            for shapes-tiny).
        resize: "squash", "center-crop" or "letterbox" ("squash").
        batch_size: images per model step, 1..1024 (16).
        device: "auto", "cpu", "cuda" or "mps" ("auto").
        dtype: "auto", "float32", "bfloat16", "float16" or "int8" ("auto").
        num_workers: decode threads, 0 for inline (None: one per core, at most 8).
        shard: "I/N" to score only shard I of N.
        overwrite: rescore samples already scored with these settings.
        progress: True for a progress bar, False for none, or `progress(done, total)`.

    Returns:
        a dict: "run" (the engine `RunSummary`) and the `flag_mislabels`
        summary (method, flagged_samples, flagged_labels, tag, view, ...).

    Raises:
        ValueError: an unsupported label field type, an empty label set, a
            template without {label}, or another invalid setting, before
            any work.
        ModelLoadError: the model cannot be loaded.
    """
    from fiftyone_blip import engine, matching, models
    from fiftyone_blip.settings import RunOptions

    kind = matching.label_kind(samples, label_field)
    field = field or f"{label_field}_match"
    engine.check_run_options(field, batch_size, shard)
    if field == label_field:
        raise ValueError(f"`field` must differ from `label_field` ({label_field!r})")
    name, _ = models.resolve_name(model, "match")
    settings = matching.MatchSettings(
        kind=kind,
        template=matching.default_template(name) if template is None else template,
        classes=list(classes) if classes is not None else matching.label_classes(samples, label_field, kind),
        margin=margin,
        itc=itc,
        crop_padding=matching.default_crop_padding(name) if crop_padding is None else crop_padding,
        resize=resize,
    )
    if level not in matching.LEVELS:
        raise ValueError(f"`level` must be one of {matching.LEVELS}, got {level!r}")
    matching.resolve_method(method, kind, {"margin": settings.margin, "itc": settings.itc})
    if threshold is None and percentile is None and top_k is None:
        threshold = 0.5
    matching.select_flags([0.0], threshold, percentile, top_k)
    loaded = models.load_model(model, task="match", device=device, dtype=dtype)
    task = matching.match_task(loaded, settings, label_field, field, samples._dataset)
    dataset = samples._dataset
    names = ["itm"] + (["margin"] if settings.margin else []) + (["itc"] if settings.itc else [])
    matching.declare_label_attributes(dataset, label_field, kind, field, names)
    summary = engine.run(
        samples,
        task,
        RunOptions(
            resize=resize,
            batch_size=batch_size,
            device=device,
            dtype=dtype,
            num_workers=num_workers,
            shard=shard,
            overwrite=overwrite,
            progress=progress,
        ),
    )
    flags = matching.flag(
        samples,
        label_field,
        field,
        method=method,
        threshold=threshold,
        percentile=percentile,
        top_k=top_k,
        level=level,
        tag=tag,
        view_name=view_name,
    )
    return {"run": summary, **flags}


def flag_mislabels(
    samples,
    label_field: str,
    field: str | None = None,
    method: str = "auto",
    threshold: float | None = None,
    percentile: float | None = None,
    top_k: int | None = None,
    level: str = "sample",
    tag: str = "mislabel",
    view_name: str | None = None,
) -> dict:
    """Flags likely mislabels from the scores `find_mislabels` stored; needs no model.

    The mistakenness score (0..1, higher = more likely wrong) of a label is,
    by `method`: "itm": 1 - p; "itc": (1 - cosine) / 2; "itm+margin":
    (2 - p - margin) / 3 ("auto": itm+margin where margins were computed,
    else itm). A sample's score is its worst label's. Writes
    `{field}_mistakenness` and `{field}_flagged` per sample (and per label for
    label fields), re-tags the samples with `tag` (earlier tags in `samples`
    are removed first), and saves a view of the flagged samples, most
    suspicious first, for review in the App.

    Args:
        samples: a FiftyOne dataset or view.
        label_field: the field that was scored.
        field: where its scores are (None: "{label_field}_match").
        method: "auto", "itm", "itc" or "itm+margin" ("auto").
        threshold: flag mistakenness >= this, in [0, 1].
        percentile: flag mistakenness at or above this percentile, in [0, 100).
        top_k: flag the k most suspicious. Give one of threshold, percentile
            and top_k (none: threshold 0.5).
        level: "sample" (flags samples) or "label" (flags individual
            classifications / detections; their samples are flagged too, and
            the labels get `tag` as a label tag) ("sample").
        tag: the sample (and label) tag ("mislabel").
        view_name: the saved review view (None: "{field}-review", with
            underscores as dashes).

    Returns:
        a dict: method, flagged_samples, flagged_labels, scored_samples,
        total_samples, tag, view, score_field, flag_field.
    """
    from fiftyone_blip import matching

    if threshold is None and percentile is None and top_k is None:
        threshold = 0.5
    return matching.flag(
        samples,
        label_field,
        field or f"{label_field}_match",
        method=method,
        threshold=threshold,
        percentile=percentile,
        top_k=top_k,
        level=level,
        tag=tag,
        view_name=view_name,
    )
