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
__all__ += ["embed", "search"]


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

    Returns:
        an `engine.RunSummary` (done, failed, skipped, total, seconds).

    Raises:
        ValueError: an invalid setting, before any sample is touched.
        ModelLoadError: the model cannot be loaded.
    """
    from fiftyone_blip import captions, engine, images, models

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
    task = captions.caption_task(loaded, settings, field=field, resize=resize)
    return engine.run(
        samples,
        task,
        batch_size=batch_size,
        num_workers=num_workers,
        shard=shard,
        overwrite=overwrite,
        progress=progress,
    )


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

    if resize not in images.RESIZE_MODES:
        raise ValueError(f"`resize` must be one of {images.RESIZE_MODES}, got {resize!r}")
    engine.check_run_options(field, batch_size, shard)
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
        batch_size=batch_size,
        num_workers=num_workers,
        shard=shard,
        overwrite=overwrite,
        progress=progress,
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
        k: how many results (20).
        brain_key: the index built by `embed` ("blip_sim").
        model: the model you expect the index to use; an index built with
            another model is an error (None: the index's own model).
        rerank: re-score the ITC shortlist with the ITM head (text queries only).
        shortlist: how many ITC results the ITM head re-scores, >= k
            (None: max(4k, 50)).
        device: where the query runs: "auto", "cpu", "cuda" or "mps" ("auto").

    Returns:
        a list of `Hit(id, filepath, score, itc, itm)`: `score` orders them
        (the ITC cosine, or with `rerank` the ITM logit + ITC cosine); `itm`
        is the ITM match probability when re-ranked.

    Raises:
        ValueError: an empty query, a brain key that does not exist or is not
            a fiftyone-blip index, or an index built with another model.
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
    raise AttributeError(f"module 'fiftyone_blip' has no attribute {name!r}")
