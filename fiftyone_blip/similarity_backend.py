"""A FiftyOne similarity backend whose text queries are re-ranked by BLIP's ITM head.

    import fiftyone.brain as fob
    from fiftyone_blip.similarity_backend import BlipSimilarityConfig

    fob.compute_similarity(dataset, model="blip-itc-base-coco", backend=BlipSimilarityConfig, brain_key="blip_sim")
    dataset.sort_by_similarity("a red circle", k=10, brain_key="blip_sim")  # ITC shortlist, ITM re-rank

`fiftyone_blip.embed` builds its index with this backend unless told another
(`backend="sklearn"`, `"lancedb"`, ...). Storage and every query other than a
text prompt are FiftyOne's sklearn backend, unchanged: vectors in the
embeddings field (or in the run), image and vector queries, `k`, `reverse`,
`dist_field`, duplicates. A text prompt runs BLIP's retrieval recipe, the one
`fiftyone_blip.search(..., rerank=True)` runs (`embeddings.rerank_scores`):
the index's model embeds the prompt, the `shortlist` nearest by ITC
(default max(4k, 128)) are re-scored by the same checkpoint's ITM head and
ordered by ITM match logit + ITC cosine; with `k=None` the rest follow in ITC
order. The App's search box and `sort_by_similarity` both reach this through
`SimilarityIndex.sort_by_similarity`, so both give the re-ranked order.

The run stores this config's class, `fiftyone_blip.similarity_backend.BlipSimilarityConfig`,
which FiftyOne imports to re-create the index in any later process (the App's
server included).

Where fiftyone-blip is not installed the index cannot load, so it cannot fall
back to ITC there: FiftyOne replaces a config class it cannot import by the
abstract `SimilarityConfig` and the results by the abstract `SimilarityIndex`,
whose `_from_dict` raises NotImplementedError (fiftyone-brain's
`BaseRunResults.from_dict`), and the App lists no similarity index for it.
A text prompt would need fiftyone-blip in any case: the index's model is
fiftyone-blip's zoo model, which an ITC-only sklearn index of fiftyone-blip
needs as well. `fiftyone_blip.embed(dataset, backend="sklearn")` rebuilds the
index as FiftyOne's own (ITC ranking; image queries need no fiftyone-blip).
"""

from __future__ import annotations

import logging
import threading

import numpy as np
from bson import ObjectId
from fiftyone.brain.internal.core.sklearn import (
    SklearnSimilarity,
    SklearnSimilarityConfig,
    SklearnSimilarityIndex,
)

logger = logging.getLogger(__name__)

BACKEND_NAME = "blip"


class BlipSimilarityConfig(SklearnSimilarityConfig):
    """Configuration of the BLIP re-ranking backend (sklearn storage).

    Args:
        shortlist (None): ITC results the ITM head re-scores for a text query
            (None: max(4k, 128), as `fiftyone_blip.search`).
        batch_size (16): images per ITM batch.
        **kwargs: keyword arguments of the sklearn backend (e.g. `metric`)
            and of `fiftyone.brain.similarity.SimilarityConfig`.
    """

    def __init__(self, shortlist=None, batch_size=16, **kwargs):
        if shortlist is not None and (isinstance(shortlist, bool) or not isinstance(shortlist, int) or shortlist < 1):
            raise ValueError(f"`shortlist` must be a positive integer or None, got {shortlist!r}")
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"`batch_size` must be a positive integer, got {batch_size!r}")
        super().__init__(**kwargs)
        self.shortlist = shortlist
        self.batch_size = batch_size

    @property
    def method(self):
        return BACKEND_NAME


class BlipSimilarity(SklearnSimilarity):
    """Factory of `BlipSimilarityIndex` (FiftyOne finds it by the config's class name)."""

    def initialize(self, samples, brain_key):
        return BlipSimilarityIndex(samples, self.config, brain_key, backend=self)


def text_prompt(query) -> str | None:
    """The text of a query that is one text prompt (a string, or a list of one), else None.

    FiftyOne's own rule: a string that is not an ObjectId is a prompt.
    """
    if isinstance(query, (list, tuple)) and len(query) == 1:
        query = query[0]
    if isinstance(query, str) and query.strip() and not ObjectId.is_valid(query):
        return query.strip()
    return None


class BlipSimilarityIndex(SklearnSimilarityIndex):
    """An sklearn similarity index whose text queries are re-ranked by BLIP's ITM head."""

    def __init__(self, *args, **kwargs):
        self._query_text = threading.local()  # the prompt of the query in progress, per thread
        super().__init__(*args, **kwargs)

    def sort_by_similarity(self, query, k=None, reverse=False, aggregation="mean", dist_field=None, _mongo=False):
        """FiftyOne's `sort_by_similarity`; a text prompt is re-ranked (see the module's docstring).

        With a re-ranked text query, `dist_field` holds minus the re-rank
        score (so smaller is closer, as the brain's distances) for the
        re-scored results, and nothing for those after them (`k=None`). A
        least-similar query (`reverse=True`) and a patches index are ranked by
        ITC alone.
        """
        text = text_prompt(query)
        rerank = text is not None and not reverse and self.config.patches_field is None
        self._query_text.value = text if rerank else None
        try:
            return super().sort_by_similarity(
                query, k=k, reverse=reverse, aggregation=aggregation, dist_field=dist_field, _mongo=_mongo
            )
        finally:
            self._query_text.value = None

    def _kneighbors(self, query=None, k=None, reverse=False, aggregation=None, return_dists=False):
        text = getattr(self._query_text, "value", None)
        if text is None:
            return super()._kneighbors(query, k, reverse, aggregation, return_dists)
        self._query_text.value = None  # one query: nested calls rank by ITC
        sample_ids, dists = self._reranked(text, query, k, aggregation)
        return (sample_ids, None, dists) if return_dists else (sample_ids, None)

    def _reranked(self, text: str, query_vector, k: int | None, aggregation):
        """(sample ids, distances) of the current view for a text query: ITC shortlist, ITM re-rank."""
        from fiftyone_blip import embeddings

        depth = min(embeddings.shortlist_size(k, self.config.shortlist), self.index_size)
        # all of the view in ITC order when k is None (the shortlist first), else the shortlist
        ids, _, itc_dists = super()._kneighbors(
            query_vector, None if k is None else depth, False, aggregation, return_dists=True
        )
        ids, itc_dists = list(ids), list(itc_dists)
        loaded = self._itm_model()
        if loaded is None:
            return ids[:k] if k is not None else ids, itc_dists[:k] if k is not None else itc_dists
        head, tail = ids[:depth], ids[depth:]
        paths = dict(zip(*self._dataset.select(head).values(["id", "filepath"])))
        head = [sample_id for sample_id in head if sample_id in paths]  # deleted since the index was built
        vectors, _, _ = self.get_embeddings(sample_ids=head)
        itc = np.asarray(vectors, dtype=np.float64) @ np.asarray(query_vector, dtype=np.float64).reshape(-1)
        score, _ = embeddings.rerank_scores(loaded, text, [paths[i] for i in head], itc, self.config.batch_size)
        order = np.argsort(-score, kind="stable")
        ranked = [head[i] for i in order] + tail
        dists = [float(-score[i]) for i in order] + [None] * len(tail)
        return (ranked[:k], dists[:k]) if k is not None else (ranked, dists)

    def _itm_model(self):
        """The index model's BLIP checkpoint, loaded (its ITM head re-ranks), or None with a warning.

        The prompt model's own loaded copy when it has one, else the checkpoint
        the index names (`zoo_manifest.index_checkpoint`), through the library's loader.
        """
        from fiftyone_blip import models, zoo_manifest

        loaded = getattr(self.get_model(), "loaded", None)
        if getattr(loaded, "task", None) == "match":
            return loaded
        checkpoint = zoo_manifest.index_checkpoint(self.config.model, self.config.model_kwargs)
        if checkpoint is None:
            logger.warning(
                "similarity index %r: its model (%r) is not a fiftyone-blip ITC model, so text queries "
                "are ranked by ITC alone",
                self.key,
                self.config.model,
            )
            return None
        revision = (self.config.model_kwargs or {}).get("revision")
        return models.load_model(checkpoint, task="match", revision=revision)
