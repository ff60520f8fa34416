"""BLIP's contrastive (ITC) embeddings, a similarity index over them, and text search.

    task = embedding_task(loaded, field="blip_embedding")   # an engine Task
    build_index(dataset, field="blip_embedding", brain_key="blip_sim", model_name="shapes-tiny")
    hits = search(dataset, "a red circle", k=20, brain_key="blip_sim", rerank=True)

Image embedding: normalize(vision_proj(vision_model(pixels).last_hidden_state[:, 0])).
Text embedding: normalize(text_proj(text_encoder(ids, mask).last_hidden_state[:, 0])),
the unimodal text encoder (no image in its cross-attention). Both come from one
`BlipForImageTextRetrieval` checkpoint (256-d for BLIP-base), so the cosine of
an image and a text embedding ranks images for a text query.

The index is a FiftyOne brain similarity run. FiftyOne reloads its model in a
later process (a script, or the App's text search) by calling
`fiftyone.zoo.load_zoo_model(config.model, **config.model_kwargs)`; the run
stores the URL of fiftyone-blip's model-zoo source and the zoo model's name
(see `fiftyone_blip.zoo_manifest.index_reference`), so that call works whatever the
process's `model_zoo_dir`.
"""

from __future__ import annotations

import collections
import dataclasses
import os
import threading

import numpy as np

from fiftyone_blip.settings import DEFAULT_BRAIN_KEY, check_brain_key
from fiftyone_blip.settings import DEFAULT_EMBEDDING_FIELD as DEFAULT_FIELD

# ITC results the ITM head re-scores unless told (at least 4k): BLIP's own
# retrieval evaluation re-ranks the top 128 (Flickr30k) or 256 (COCO).
DEFAULT_SHORTLIST = 128
MAX_QUERY_TOKENS = 64


class Embedder:
    """Image and text embeddings, and ITM scores, from one loaded `BlipForImageTextRetrieval`."""

    def __init__(self, loaded):
        import torch

        self.loaded = loaded
        self.model = loaded.model
        self.tokenizer = loaded.processor.tokenizer
        self.device = loaded.device
        self.torch = torch
        max_positions = self.model.config.text_config.max_position_embeddings
        self.max_tokens = min(MAX_QUERY_TOKENS, max_positions)

    @property
    def dim(self) -> int:
        return self.model.config.image_text_hidden_size

    def _array(self, features) -> np.ndarray:
        return features.cpu().numpy().astype(np.float32)

    def embed_images(self, pixel_values) -> np.ndarray:
        """(N, 3, S, S) preprocessed pixels -> (N, D) unit vectors."""
        with self.torch.inference_mode(), self.loaded.autocast():
            image_embeds = self.loaded.image_embeds(pixel_values)
            return self._array(self.loaded.heads.image_features(image_embeds))

    def _tokens(self, texts: list[str]):
        return self.loaded.text_tokens(texts, self.max_tokens)

    def embed_texts(self, texts: list[str]) -> np.ndarray:
        """Texts -> (N, D) unit vectors from the unimodal text encoder."""
        texts = [check_query(text) for text in texts]
        input_ids, attention_mask = self._tokens(texts)
        with self.torch.inference_mode(), self.loaded.autocast():
            return self._array(self.loaded.heads.text_features(input_ids, attention_mask))

    def image_states(self, pixel_values):
        """The vision tower's output (`image_embeds`, N x tokens x width) of preprocessed pixels."""
        with self.torch.inference_mode(), self.loaded.autocast():
            return self.loaded.image_embeds(pixel_values)

    def itm_logits(self, image_embeds, text: str) -> np.ndarray:
        """ITM (no match, match) logits of N images, given by their `image_states`, against one text."""
        input_ids, attention_mask = self._tokens([check_query(text)])
        with self.torch.inference_mode(), self.loaded.autocast():
            n = image_embeds.shape[0]
            logits = self.loaded.itm_logits(image_embeds, input_ids.expand(n, -1), attention_mask.expand(n, -1))
        return logits.cpu().numpy()


class VisionStates:
    """The vision tower's output of recently re-ranked images, by file (path, size, modification time).

    Re-ranking runs the vision tower on every image of a shortlist, and most of
    the cost of a text query is there (BLIP-base: 577 x 768 states an image);
    a later query over the same images (a refined App search) then runs only
    the ITM pass. The least recently used states go first once `budget` bytes
    are held; a file changed on disk has another key.
    """

    def __init__(self, budget: int):
        self.budget, self.held = budget, 0
        self.states: collections.OrderedDict = collections.OrderedDict()
        self.lock = threading.Lock()

    @staticmethod
    def key(path: str):
        """The file's (path, size, mtime), or None where it cannot be read (it is then not kept)."""
        try:
            stat = os.stat(path)
        except OSError:
            return None
        return path, stat.st_size, stat.st_mtime_ns

    def get(self, key):
        with self.lock:
            state = self.states.get(key)
            if state is not None:
                self.states.move_to_end(key)
            return state

    def put(self, key, state) -> None:
        size = state.element_size() * state.nelement()
        if key is None or size > self.budget:
            return
        with self.lock:
            if key in self.states:
                return
            self.states[key] = state
            self.held += size
            while self.held > self.budget:
                _, old = self.states.popitem(last=False)
                self.held -= old.element_size() * old.nelement()


# the vision states a loaded model keeps for re-ranking (`LoadedModel.vision_states`)
VISION_STATES_BYTES = 512 * 2**20


def check_query(text) -> str:
    """A text query must be a non-empty string."""
    if not isinstance(text, str) or not text.strip():
        raise ValueError(f"`query` must be a non-empty text or a sample id, got {text!r}")
    return text.strip()


def serialize(vector: np.ndarray) -> bytes:
    """The bytes FiftyOne's VectorField stores (compressed `numpy.save`)."""
    import fiftyone.core.utils as fou

    return fou.serialize_numpy_array(vector)


def embedding_task(model, field: str = DEFAULT_FIELD, resize: str = "squash", fast_decode: bool = False):
    """An engine `Task` that writes each image's ITC embedding (a unit vector) into `field`.

    `model`: a `models.ModelReference` (loaded once the engine's checks pass) or a `LoadedModel`.
    """
    import fiftyone as fo

    from fiftyone_blip import engine

    if model.task != "match":
        raise ValueError(f"embeddings need a BlipForImageTextRetrieval model (task 'match'), got task {model.task!r}")
    dim = model.config.image_text_hidden_size

    def bind():
        loaded = model.load()
        preprocess = loaded.preprocessor(resize, fast_decode)
        embedder = Embedder(loaded)

        def prepare(path):
            return preprocess.pixels(path)[0]  # uint8: normalised on the model's device in `step`

        def step(inputs):
            vectors = embedder.embed_images(preprocess.to_pixel_values(inputs, loaded.device))
            return [{field: serialize(vector)} for vector in vectors]

        return prepare, step

    return engine.Task(
        capability="embed",
        field=field,
        fields={field: fo.VectorField},
        settings={"resize": resize, "fast_decode": fast_decode, "normalize": True, "dim": dim},
        identity=model.identity,
        bind=bind,
        descriptions={field: f"BLIP image embedding in the ITC space ({dim} values, unit length)"},
    )


# --- the similarity index ---------------------------------------------------------------------


def index_model_name(samples, brain_key: str) -> str:
    """The BLIP model of a fiftyone-blip similarity index; a one-line ValueError if there is none."""
    dataset = samples._root_dataset
    if not isinstance(brain_key, str) or not brain_key:
        raise ValueError(f"`brain_key` must be a non-empty name, got {brain_key!r}")
    if brain_key not in dataset.list_brain_runs():
        keys = dataset.list_brain_runs(type="similarity")
        raise ValueError(
            f"dataset {dataset.name!r} has no similarity index {brain_key!r} "
            f"(indexes: {', '.join(keys) or 'none'}); build one with `fiftyone-blip embed {dataset.name}`"
        )
    from fiftyone_blip import zoo_manifest

    config = dataset.get_brain_info(brain_key).config
    checkpoint = zoo_manifest.index_checkpoint(getattr(config, "model", None), getattr(config, "model_kwargs", None))
    if checkpoint is None:
        raise ValueError(
            f"brain key {brain_key!r} is not a fiftyone-blip index (it was built with model "
            f"{getattr(config, 'model', None)!r}); use an index built by `fiftyone_blip.embed`"
        )
    return checkpoint


def stored_model_name(name: str | None) -> str:
    """What an index stores to reload its model, without loading it: a bundled name, an
    absolute local directory, or a hub id."""
    from fiftyone_blip import models

    resolved, local = models.resolve_name(name, "match")
    if resolved in models.BUNDLED or local is None:
        return resolved
    return str(local)


def check_same_model(samples, brain_key: str, model: str | None) -> str:
    """Returns the index's BLIP model; raises if `model` is given and differs from it."""
    built_with = index_model_name(samples, brain_key)
    if model is not None and stored_model_name(model) != built_with:
        raise ValueError(
            f"index {brain_key!r} was built with model {built_with!r}, not {model!r}: "
            f"its embeddings are not comparable; search it without `model` or re-embed with {model!r}"
        )
    return built_with


def check_index_key(samples, brain_key: str, model_name: str) -> bool:
    """The rule for the brain key an index is built under: a name FiftyOne accepts that holds no brain run,
    or a fiftyone-blip index of the same model (`stored_model_name`), which the build replaces.

    Returns:
        whether the key holds such an index.
    """
    check_brain_key(brain_key)
    dataset = samples._root_dataset
    if brain_key not in dataset.list_brain_runs():
        return False
    try:
        built_with = index_model_name(dataset, brain_key)
    except ValueError:
        raise ValueError(
            f"`brain_key` {brain_key!r} holds another kind of brain run, not a fiftyone-blip index: choose another key"
        ) from None
    if built_with != model_name:
        raise ValueError(
            f"`brain_key` {brain_key!r} already holds an index built with model {built_with!r}; choose another "
            f"key or delete it (dataset.delete_brain_run({brain_key!r}))"
        )
    return True


def backend_config(backend):
    """What `compute_similarity(backend=...)` takes for a backend name: fiftyone-blip's re-ranking
    backend ("blip") as its config class, which FiftyOne accepts and stores by name; others as given."""
    from fiftyone_blip import similarity_backend

    if backend == similarity_backend.BACKEND_NAME:
        return similarity_backend.BlipSimilarityConfig
    return backend


def build_index(
    samples,
    model_name: str,
    field: str = DEFAULT_FIELD,
    brain_key: str = DEFAULT_BRAIN_KEY,
    backend: str | None = None,
    revision: str | None = None,
    patches_field: str | None = None,
    **backend_kwargs,
):
    """Builds (or rebuilds) a brain similarity index from the embeddings stored in `field`.

    The index covers the samples of `samples` that hold an embedding (with
    `patches_field`: the objects of that label field whose attribute `field`
    holds one, as `compute_similarity(patches_field=...)` does). An
    existing index under `brain_key` built with the same model is replaced;
    one built with another model is an error.

    `backend`: "blip" (`similarity_backend`: sklearn storage, text queries
    re-ranked by ITM), None (FiftyOne's default) or any backend FiftyOne knows.

    Returns:
        the `fiftyone.brain.SimilarityIndex`.
    """
    import fiftyone.brain as fob
    from fiftyone import ViewField as F

    dataset = samples._root_dataset
    if check_index_key(samples, brain_key, model_name):
        dataset.delete_brain_run(brain_key)
    if patches_field is None:
        path, with_embeddings = field, samples.match(F(field) != None)  # noqa: E711
    else:
        path = f"{dataset._get_label_field_root(patches_field)[0]}.{field}"
        with_embeddings = samples.filter_labels(patches_field, F(field) != None)  # noqa: E711
    if path not in dataset.get_field_schema(flat=patches_field is not None):
        raise ValueError(f"dataset {dataset.name!r} has no embeddings field {path!r}: embed it first")
    if len(with_embeddings) == 0:
        raise ValueError(f"no sample of {dataset.name!r} holds an embedding in {path!r}")
    from fiftyone_blip import zoo_manifest

    model, model_kwargs = zoo_manifest.index_reference(model_name, revision)
    return fob.compute_similarity(
        with_embeddings,
        embeddings=field,
        patches_field=patches_field,
        model=model,
        model_kwargs=model_kwargs,
        brain_key=brain_key,
        backend=backend_config(backend),
        progress=False,
        **backend_kwargs,
    )


# --- search -----------------------------------------------------------------------------------


@dataclasses.dataclass
class Hit:
    """One search result. `score` orders the results: the ITC cosine, or with re-ranking
    the ITM match logit plus the ITC cosine (BLIP's retrieval recipe)."""

    id: str
    filepath: str
    score: float
    itc: float
    itm: float | None = None  # ITM match probability, when re-ranked

    def __str__(self) -> str:
        itm = f"  itm {self.itm:.4f}" if self.itm is not None else ""
        return f"{self.id}  {self.filepath}  {self.score:.4f}{itm}"


def indexed_in_view(results, samples, brain_key: str) -> int:
    """How many samples of `samples` the index holds (deleted samples do not count).

    Raises:
        ValueError: none does (nothing to search), before any model is loaded.
    """
    if results.sample_ids is not None:
        count = len(set(samples.values("id")).intersection(results.sample_ids))
    else:
        results.use_view(samples)
        try:
            count = results.index_size
        finally:
            results.clear_view()
    if not count:
        raise ValueError(
            f"no sample of the searched view is in the index {brain_key!r} "
            f"({len(samples)} samples, none indexed): embed them first"
        )
    return count


def nearest_in_view(results, query_vector, k: int):
    """The k nearest samples of the index's current view, asking the index for more while some of
    its nearest were deleted since it was built (the index keeps their ids; the view drops them)."""
    depth = k
    view = results.sort_by_similarity(query_vector, k=depth)
    while len(view) < k and depth < results.index_size:
        depth = min(depth + k - len(view), results.index_size)
        view = results.sort_by_similarity(query_vector, k=depth)
    return view


def _is_sample_id(query) -> bool:
    from bson import ObjectId

    return isinstance(query, str) and ObjectId.is_valid(query.strip())


def search(
    samples,
    query: str,
    k: int = 20,
    brain_key: str = DEFAULT_BRAIN_KEY,
    model: str | None = None,
    rerank: bool = False,
    shortlist: int | None = None,
    field: str | None = None,
    device: str = "auto",
    batch_size: int = 16,
) -> list[Hit]:
    """The k samples most like a text (or like a sample, given its id), best first.

    See `fiftyone_blip.search` for the arguments.
    """
    from fiftyone_blip import models

    if not isinstance(query, str) or not query.strip():
        raise ValueError(f"`query` must be a non-empty text or a sample id, got {query!r}")
    model_name = check_same_model(samples, brain_key, model)  # a missing index first: no `k` fits it
    if not isinstance(k, int) or k < 1:
        raise ValueError(f"`k` must be a positive integer, got {k!r}")
    count = len(samples)
    if k > count:
        raise ValueError(f"`k` must be at most the number of samples searched ({count}), got {k}")
    query = query.strip()
    dataset = samples._root_dataset
    info = dataset.get_brain_info(brain_key)
    field = field or info.config.embeddings_field
    by_id = _is_sample_id(query)
    if by_id and rerank:
        raise ValueError("`rerank` needs a text query; an image query (a sample id) is ranked by ITC only")
    if shortlist is not None and (not isinstance(shortlist, int) or shortlist < k):
        raise ValueError(f"`shortlist` must be an integer >= k ({k}), got {shortlist!r}")
    # The query sample comes back as its own nearest neighbour; it is dropped below.
    depth = shortlist_size(k, shortlist) if rerank else k + int(by_id)

    results = dataset.load_brain_results(brain_key)
    depth = min(depth, indexed_in_view(results, samples, brain_key))
    loaded = None
    if by_id:
        if len(dataset.select(query)) == 0:
            raise ValueError(f"no sample with id {query!r} in dataset {dataset.name!r}")
        vector = dataset[query][field] if field else _index_vectors(results, [query]).get(query)
        if vector is None:
            raise ValueError(f"sample {query!r} has no embedding in {field or brain_key!r}")
        query_vector = np.asarray(vector, dtype=np.float32)
    else:
        revision = (info.config.model_kwargs or {}).get("revision")
        loaded = models.load_model(model_name, task="match", device=device, revision=revision)
        query_vector = Embedder(loaded).embed_texts([query])[0]

    # FiftyOne caches loaded results per process: restrict them to the view only for this query.
    if samples is not dataset:
        results.use_view(samples)
    try:
        view = nearest_in_view(results, query_vector, depth)
        if field:
            ids, paths, vectors = view.values(["id", "filepath", field])
        else:  # an index that holds its embeddings itself (`compute_similarity(model=...)`)
            ids, paths = view.values(["id", "filepath"])
            by_id = _index_vectors(results, ids)
            vectors = [by_id.get(sample_id) for sample_id in ids]
    finally:
        if samples is not dataset:
            results.clear_view()
    itc = np.array([float(np.dot(query_vector, v)) if v is not None else -1.0 for v in vectors])
    if by_id:
        keep = [i for i, sid in enumerate(ids) if sid != query]  # the query sample is not its own neighbour
        ids, paths, itc = [ids[i] for i in keep], [paths[i] for i in keep], itc[keep]
    order = np.argsort(-itc, kind="stable")
    if not rerank:
        return [Hit(ids[i], paths[i], float(itc[i]), float(itc[i])) for i in order[:k]]

    score, probability = rerank_scores(loaded, query, paths, itc, batch_size)
    order = np.argsort(-score, kind="stable")
    return [Hit(ids[i], paths[i], float(score[i]), float(itc[i]), float(probability[i])) for i in order[:k]]


def shortlist_size(k: int | None, shortlist: int | None = None) -> int:
    """How many ITC results the ITM head re-scores: `shortlist`, else max(4k, DEFAULT_SHORTLIST)."""
    return shortlist or max(4 * (k or 0), DEFAULT_SHORTLIST)


def rerank_scores(loaded, query: str, paths: list[str], itc: np.ndarray, batch_size: int = 16):
    """BLIP's re-ranking of an ITC shortlist: (score, ITM match probability) per image.

    The score, which orders the shortlist, is the ITM match logit plus the ITC
    cosine; an unreadable image scores -inf (it sinks to the end).
    """
    logits = _itm_logits(loaded, query, paths, batch_size).astype(np.float64)
    probability = 1.0 / (1.0 + np.exp(logits[:, 0] - logits[:, 1]))  # softmax(logits)[:, 1], overflow-free
    score = np.where(np.isnan(logits[:, 1]), -np.inf, logits[:, 1] + np.asarray(itc, dtype=np.float64))
    return score, probability


def _index_vectors(results, sample_ids: list[str]) -> dict:
    """Sample id -> embedding, read from a similarity index (for indexes without an embeddings field)."""
    vectors, ids, _ = results.get_embeddings(sample_ids=list(sample_ids), allow_missing=True)
    return {sample_id: np.asarray(vector, dtype=np.float32) for sample_id, vector in zip(ids, vectors)}


def search_view(samples, query: str, score_field: str | None = None, **settings):
    """`search`'s results as a view of `samples`, best first; see `fiftyone_blip.search`.

    With `score_field`, each result's score is stored there (a float field of
    the dataset, as the brain's `dist_field`); the field's earlier scores,
    on samples that are not results now, are cleared. A field that this
    search did not make is refused before any search.
    """
    import fiftyone as fo

    from fiftyone_blip import fields

    dataset = samples._root_dataset
    if score_field is not None:
        fields.check(dataset, {score_field: fo.FloatField}, "search")
        existing = dataset.get_field(score_field)
        if existing is not None and (existing.info or {}).get("capability") != "search":
            raise ValueError(
                f"field {score_field!r} already exists and fiftyone-blip's search did not make it: "
                f"choose another `score_field`"
            )
    hits = search(samples, query, **settings)
    ids = [hit.id for hit in hits]
    if score_field is not None:
        fields.declare(dataset, {score_field: fo.FloatField}, "search")
        brain_key = settings.get("brain_key", DEFAULT_BRAIN_KEY)
        fields.describe(
            dataset,
            {score_field: f"the score of fiftyone-blip's latest search of {brain_key!r} (higher: a better match)"},
            fields.writer_info("search", score_field, {"model": index_model_name(dataset, brain_key)}, query=query),
        )
        stale = dataset.exists(score_field).values("id")
        dataset.set_values(score_field, {sample_id: None for sample_id in stale}, key_field="id")
        dataset.set_values(score_field, {hit.id: hit.score for hit in hits}, key_field="id")
    return samples.select(ids, ordered=True)


def _itm_logits(loaded, query: str, paths: list[str], batch_size: int) -> np.ndarray:
    """ITM (no match, match) logits of each image against the query; NaN for an unreadable image."""
    import torch

    from fiftyone_blip import engine
    from fiftyone_blip.images import ImageDecodeError

    preprocess = loaded.preprocessor("squash")
    embedder = Embedder(loaded)
    kept = loaded.vision_states
    logits = np.full((len(paths), 2), np.nan, dtype=np.float32)
    for start in range(0, len(paths), batch_size):
        states: dict[int, object] = {}
        fresh, arrays = [], []
        for i in range(start, min(start + batch_size, len(paths))):
            key = kept.key(paths[i])
            state = kept.get(key) if key is not None else None
            if state is not None:
                states[i] = state
                continue
            try:
                arrays.append(preprocess(paths[i])[0])
                fresh.append((i, key))
            except ImageDecodeError:
                continue  # an unreadable image keeps no ITM score and sinks to the end
        if arrays:
            for (i, key), state in zip(fresh, embedder.image_states(engine.to_batch(arrays, "cpu"))):
                states[i] = state.clone()  # its own storage: the batch's is not held by the states kept
                kept.put(key, states[i])
        if states:
            chunk = sorted(states)
            logits[chunk] = embedder.itm_logits(torch.stack([states[i] for i in chunk]), query)
    return logits


def task_for(settings, options):
    """The engine `Task` an embed run with these settings and options would run (its model not loaded)."""
    from fiftyone_blip import models

    model = models.reference_for(settings.model, "match", options)
    return embedding_task(model, field=settings.field, resize=options.resize, fast_decode=options.fast_decode)


def run(samples, settings, options, **backend_kwargs):
    """Embeds `samples` on the engine, then builds the similarity index; see `fiftyone_blip.embed`.

    `settings` is a `settings.EmbedSettings`, `options` a `RunOptions`;
    `backend_kwargs` go to the similarity backend (e.g. `metric="cosine"`).
    """
    from fiftyone import ViewField as F

    from fiftyone_blip import engine

    stored_name = stored_model_name(settings.model)
    dataset = samples._root_dataset
    brain_key = settings.brain_key
    if brain_key is not None:
        check_index_key(dataset, brain_key, stored_name)  # before any image is embedded
    task = engine.placed(engine.run_collection(samples), task_for(settings, options), options)
    if task.labels is not None and len(task.labels.fields) > 1 and brain_key is not None:
        raise ValueError(
            "a similarity index covers one label field: embed evaluation patches with brain_key=None, "
            "or run on dataset.to_patches(FIELD)"
        )
    summary = engine.run(samples, task, options)
    if brain_key is not None and options.shard is None:
        patches_field = None if task.labels is None else task.labels.fields[0]
        if patches_field is None:
            embedded = dataset.match(F(task.run_field) == task.run_stamp)
        else:
            embedded = dataset.filter_labels(patches_field, F(task.run_field) == task.run_stamp)
        build_index(
            embedded,
            stored_name,
            field=settings.field,
            brain_key=brain_key,
            backend=settings.backend,
            revision=options.revision,
            patches_field=patches_field,
            **backend_kwargs,
        )
    return summary
