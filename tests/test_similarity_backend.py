"""fiftyone-blip's similarity backend: text prompts re-ranked by ITM through FiftyOne's own
`sort_by_similarity` (what the App's search runs); every other query as FiftyOne's sklearn backend."""

import json
import subprocess
import sys

import numpy as np
import pytest
from click.testing import CliRunner

import fiftyone_blip
from fiftyone_blip.cli import main

QUERY = "a red circle"


@pytest.fixture(scope="module")
def indexed(fo):
    """48 held-out shapes images indexed twice: the default backend (`blip_sim`) and sklearn (`sk_sim`)."""
    name = "t-simbackend"
    dataset = fiftyone_blip.load_shapes_dataset(name, count=48, split="test", overwrite=True)
    fiftyone_blip.embed(dataset, model="shapes-tiny", progress=False)
    fiftyone_blip.embed(dataset, model="shapes-tiny", brain_key="sk_sim", backend="sklearn", progress=False)
    yield dataset
    fo.delete_dataset(name)


def itm_order(dataset, text: str, ids: list[str]) -> list[str]:
    """`ids` ordered by ITM match logit + ITC cosine, computed with transformers' own ITM head."""
    import torch
    from PIL import Image

    from fiftyone_blip import embeddings, models

    loaded = models.load_model("shapes-tiny", task="match", device="cpu")
    text_vector = embeddings.Embedder(loaded).embed_texts([text])[0]
    view = dataset.select(ids, ordered=True)
    paths, vectors = view.values(["filepath", "blip_embedding"])
    pixels = loaded.processor(images=[Image.open(p).convert("RGB") for p in paths], return_tensors="pt")
    tokens = loaded.processor.tokenizer([text], return_tensors="pt")
    with torch.no_grad():
        logits = loaded.model(
            input_ids=tokens["input_ids"].expand(len(ids), -1),
            attention_mask=tokens["attention_mask"].expand(len(ids), -1),
            pixel_values=pixels["pixel_values"],
            use_itm_head=True,
        ).itm_score
    score = logits[:, 1].numpy() + np.stack(vectors) @ text_vector
    return [ids[i] for i in np.argsort(-score, kind="stable")]


def test_embed_builds_the_reranking_backend_and_sklearn_on_request(indexed):
    from fiftyone.brain.internal.core.sklearn import SklearnSimilarityConfig

    from fiftyone_blip.similarity_backend import BlipSimilarityConfig, BlipSimilarityIndex

    config = indexed.get_brain_info("blip_sim").config
    assert type(config) is BlipSimilarityConfig and config.method == "blip"
    assert config.cls == "fiftyone_blip.similarity_backend.BlipSimilarityConfig"
    assert config.supports_prompts and config.embeddings_field == "blip_embedding"
    assert isinstance(indexed.load_brain_results("blip_sim"), BlipSimilarityIndex)
    assert type(indexed.get_brain_info("sk_sim").config) is SklearnSimilarityConfig
    # an sklearn index keeps ranking by ITC, as `search` without re-ranking
    itc = fiftyone_blip.search(indexed, QUERY, k=10, brain_key="sk_sim").values("id")
    assert indexed.sort_by_similarity(QUERY, k=10, brain_key="sk_sim").values("id") == itc


def test_a_text_query_follows_the_itm_order(indexed):
    """All 48 fit the default shortlist (128): the order is transformers' ITM logit + ITC, not ITC's."""
    itc = indexed.sort_by_similarity(QUERY, brain_key="sk_sim").values("id")
    expected = itm_order(indexed, QUERY, itc)
    assert expected[:10] != itc[:10]  # the case tells the two orders apart
    found = indexed.sort_by_similarity(QUERY, k=10, brain_key="blip_sim").values("id")
    assert found == expected[:10]
    assert fiftyone_blip.search(indexed, QUERY, k=10, rerank=True).values("id") == found  # one recipe
    # the stage form the App's server builds gives the same order
    from fiftyone.core.stages import SortBySimilarity

    assert indexed.add_stage(SortBySimilarity(QUERY, k=10, brain_key="blip_sim")).values("id") == found
    # a view: only its samples, re-ranked among themselves
    view = indexed.skip(8).limit(30)
    in_view = view.sort_by_similarity(QUERY, k=6, brain_key="blip_sim").values("id")
    assert in_view == itm_order(indexed, QUERY, view.values("id"))[:6]


def test_a_shortlist_reranks_the_itc_head_and_k_none_keeps_the_rest_in_itc_order(indexed, fo):
    import fiftyone.brain as fob

    fob.compute_similarity(
        indexed, embeddings="blip_embedding", brain_key="short_sim", backend=_config_class(), shortlist=12,
        model=indexed.get_brain_info("blip_sim").config.model,
        model_kwargs=indexed.get_brain_info("blip_sim").config.model_kwargs,
    )  # fmt: skip
    try:
        itc = indexed.sort_by_similarity(QUERY, brain_key="sk_sim").values("id")
        found = indexed.sort_by_similarity(QUERY, brain_key="short_sim", dist_field="short_dist")
        ids = found.values("id")
        assert ids[:12] == itm_order(indexed, QUERY, itc[:12]) and ids[12:] == itc[12:]
        dists = found.values("short_dist")
        assert dists[:12] == sorted(dists[:12]) and all(d is None for d in dists[12:])
        assert indexed.sort_by_similarity(QUERY, k=5, brain_key="short_sim").values("id") == ids[:5]
    finally:
        indexed.delete_brain_run("short_sim")
        indexed.delete_sample_field("short_dist")


def _config_class():
    from fiftyone_blip.similarity_backend import BlipSimilarityConfig

    return BlipSimilarityConfig


def test_image_vector_and_least_similar_queries_and_k_behave_as_sklearn(indexed):
    sample_id = indexed.first().id
    vector = np.asarray(indexed.first()["blip_embedding"])
    for query in (sample_id, [sample_id, indexed.last().id], vector):
        for k in (1, 3, None):
            ours = indexed.sort_by_similarity(query, k=k, brain_key="blip_sim").values("id")
            theirs = indexed.sort_by_similarity(query, k=k, brain_key="sk_sim").values("id")
            assert ours == theirs and len(ours) == (k or 48)
    for k in (3, 48, 100):
        assert len(indexed.sort_by_similarity(QUERY, k=k, brain_key="blip_sim")) == min(k, 48)
    least = indexed.sort_by_similarity(QUERY, k=4, reverse=True, brain_key="blip_sim").values("id")
    assert least == indexed.sort_by_similarity(QUERY, k=4, reverse=True, brain_key="sk_sim").values("id")


def test_a_fresh_process_recreates_the_index_from_its_config(indexed):
    expected = indexed.sort_by_similarity(QUERY, k=10, brain_key="blip_sim").values("id")
    code = f"""
import json
import fiftyone as fo
dataset = fo.load_dataset({indexed.name!r})
results = dataset.load_brain_results("blip_sim")
ids = dataset.sort_by_similarity({QUERY!r}, k=10, brain_key="blip_sim").values("id")
print(json.dumps({{"index": type(results).__name__, "ids": ids}}))
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out == {"index": "BlipSimilarityIndex", "ids": expected}


def test_without_fiftyone_blip_the_index_cannot_load_and_an_sklearn_one_still_serves_images(indexed):
    """Where fiftyone_blip cannot be imported, FiftyOne falls back to the abstract SimilarityConfig and
    cannot load the index (so no ITC fallback there); the dataset, its other runs and deleting the
    index still work, and an sklearn index answers image queries."""
    clone = indexed.clone("t-simbackend-noblip")
    try:
        expected = clone.sort_by_similarity(clone.first().id, k=3, brain_key="sk_sim").values("id")
        code = f"""
import json, sys
sys.modules["fiftyone_blip"] = None  # as if not installed
import fiftyone as fo
dataset = fo.load_dataset({clone.name!r})
out = {{"runs": sorted(dataset.list_brain_runs())}}
try:
    dataset.load_brain_results("blip_sim")
    out["error"] = None
except Exception as error:
    out["error"] = type(error).__name__
out["config"] = type(dataset.get_brain_info("blip_sim").config).__name__
out["image"] = dataset.sort_by_similarity(dataset.first().id, k=3, brain_key="sk_sim").values("id")
dataset.delete_brain_run("blip_sim")
out["left"] = dataset.list_brain_runs()
print(json.dumps(out))
"""
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stderr[-3000:]
        out = json.loads(proc.stdout.strip().splitlines()[-1])
        assert out["runs"] == ["blip_sim", "sk_sim"]
        assert out["error"] == "NotImplementedError" and out["config"] == "SimilarityConfig"
        assert out["image"] == expected and out["left"] == ["sk_sim"]
    finally:
        clone.delete()


def test_an_index_of_another_model_is_ranked_by_itc_with_a_warning(indexed, caplog):
    results = indexed.load_brain_results("blip_sim")
    itc = indexed.sort_by_similarity(QUERY, k=5, brain_key="sk_sim").values("id")
    model = results.get_model()

    class NotBlip:  # what get_model() gives for a model that is not fiftyone-blip's
        def __enter__(self):
            return self

        def __exit__(self, *args):
            pass

        def embed_prompts(self, prompts):
            return model.embed_prompts(prompts)

    stored = results.config.model, results.config.model_kwargs
    results._model = NotBlip()
    try:
        # with fiftyone-blip's model named in the config, the checkpoint loads by the library's loader
        assert results.sort_by_similarity(QUERY, k=5).values("id") == fiftyone_blip.search(
            indexed, QUERY, k=5, rerank=True
        ).values("id")
        results.config.model, results.config.model_kwargs = "clip-vit-base32-torch", None
        with caplog.at_level("WARNING", logger="fiftyone_blip.similarity_backend"):
            ids = results.sort_by_similarity(QUERY, k=5).values("id")
        assert ids == itc
        assert "not a fiftyone-blip ITC model, so text queries are ranked by ITC alone" in caplog.text
    finally:
        results._model = model
        results.config.model, results.config.model_kwargs = stored


def test_cli_and_operator_embed_build_the_backend(fo, plugin_installed):
    import fiftyone.operators as foo

    from fiftyone_blip.similarity_backend import BlipSimilarityConfig

    dataset = fiftyone_blip.load_shapes_dataset("t-simbackend-surfaces", count=12, split="test", overwrite=True)
    try:
        result = CliRunner().invoke(main, ["embed", dataset.name, "-m", "shapes-tiny", "-b", "cli_sim", "-q"])
        assert result.exit_code == 0, result.output
        assert type(dataset.get_brain_info("cli_sim").config) is BlipSimilarityConfig
        result = foo.execute_operator(
            "@fiftyone-blip/blip/compute_embeddings",
            ctx=dict(
                view=dataset.view(), params=dict(model="shapes-tiny", brain_key="app_sim", view_target="CURRENT_VIEW")
            ),
        )
        result.raise_exceptions()
        assert type(dataset.get_brain_info("app_sim").config) is BlipSimilarityConfig
    finally:
        fo.delete_dataset(dataset.name)
