"""Embeddings, the similarity index and search: SDK, CLI, operator, a fresh process, two backends."""

import json
import subprocess
import sys

import numpy as np
import pytest
from click.testing import CliRunner

import fiftyone_blip
from fiftyone_blip.cli import main


@pytest.fixture(scope="module")
def base(fo):
    """48 held-out shapes images, rendered for this module.

    Not the shared `tests-shapes`: FiftyOne attaches every process of a user to
    the first running database service, whatever its database_dir, so test
    sessions running side by side can see each other's datasets, whose images
    may live in another session's deleted temporary folder.
    """
    dataset = fiftyone_blip.load_shapes_dataset("t-embed-base", count=48, split="test", overwrite=True)
    yield dataset
    fo.delete_dataset("t-embed-base")


@pytest.fixture
def clone(base, fo, request):
    name = "t-" + request.node.name[:40]
    if fo.dataset_exists(name):
        fo.delete_dataset(name)
    dataset = base.clone(name)
    yield dataset
    fo.delete_dataset(name)


@pytest.fixture(scope="module")
def embedded(base, fo):
    """The shapes test images plus one missing file, embedded with shapes-tiny and indexed twice."""
    if fo.dataset_exists("t-embedded"):
        fo.delete_dataset("t-embedded")
    dataset = base.clone("t-embedded")
    dataset.add_sample(fo.Sample(filepath="/nonexistent/missing.png"))
    summary = fiftyone_blip.embed(dataset, model="shapes-tiny", progress=False)
    assert (summary.done, summary.failed) == (48, 1)
    fiftyone_blip.embed(dataset, model="shapes-tiny", brain_key="blip_lance", backend="lancedb", progress=False)
    yield dataset
    fo.delete_dataset("t-embedded")


@pytest.fixture(scope="module")
def other_matcher(tmp_path_factory):
    """A tiny random BlipForImageTextRetrieval: "another model"."""
    import torch
    from transformers import BlipForImageTextRetrieval, BlipProcessor

    from fiftyone_blip.models import BUNDLED
    from fiftyone_blip.shapes.train import build_config

    directory = tmp_path_factory.mktemp("other-matcher")
    processor = BlipProcessor.from_pretrained(BUNDLED["shapes-tiny"]["match"])
    processor.image_processor.size = {"height": 32, "width": 32}
    config = build_config(
        processor.tokenizer, "matcher", image_size=32, patch_size=16, vision_width=32, vision_layers=1,
        text_width=32, text_layers=1, heads=2,
    )  # fmt: skip
    torch.manual_seed(0)
    BlipForImageTextRetrieval(config).save_pretrained(directory)
    processor.save_pretrained(directory)
    return directory


def test_embeddings_are_unit_vectors_in_the_models_itc_space(embedded):
    """Image x text cosines equal transformers' own ITC scores (use_itm_head=False)."""
    import torch

    from fiftyone_blip import embeddings, models

    assert embedded.count("blip_embedding") == 48
    missing = embedded.select_by("filepath", ["/nonexistent/missing.png"]).first()
    assert missing["blip_embedding"] is None and "file not found" in missing["blip_embedding_error"]
    vectors = np.stack(embedded.exists("blip_embedding").values("blip_embedding")[:4])
    loaded = models.load_model("shapes-tiny", task="match", device="cpu")
    assert vectors.shape == (4, loaded.model.config.image_text_hidden_size)
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)

    texts = ["a red circle", "a blue square on the left"]
    text_vectors = embeddings.Embedder(loaded).embed_texts(texts)
    processor = loaded.processor
    paths = embedded.exists("blip_embedding").values("filepath")[:4]
    from PIL import Image

    batch = processor(images=[Image.open(p).convert("RGB") for p in paths], return_tensors="pt")
    tokens = processor.tokenizer(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        for t in range(2):
            reference = loaded.model(
                input_ids=tokens["input_ids"][t : t + 1].expand(4, -1),
                attention_mask=tokens["attention_mask"][t : t + 1].expand(4, -1),
                pixel_values=batch["pixel_values"],
                use_itm_head=False,
            ).itm_score
            assert np.allclose(vectors @ text_vectors[t], reference.diagonal().numpy(), atol=1e-4)


def test_a_fresh_process_searches_by_text_and_by_image_without_a_model(embedded):
    """Built in this process; queried in another one that never passes or imports a model."""
    # embed's default backend re-ranks text queries by ITM, as `search(rerank=True)`; LanceDB ranks by ITC
    expected = {
        "blip_sim": fiftyone_blip.search(embedded, "a red circle", k=5, rerank=True).values("id"),
        "blip_lance": fiftyone_blip.search(embedded, "a red circle", k=5, brain_key="blip_lance").values("id"),
    }
    itc = fiftyone_blip.search(embedded, "a red circle", k=5).values("id")
    sample_id = embedded.first().id
    code = f"""
import json, sys
import fiftyone as fo
dataset = fo.load_dataset("t-embedded")
out = {{}}
for key in ("blip_sim", "blip_lance"):
    out[key] = dataset.sort_by_similarity("a red circle", k=5, brain_key=key).values("id")
    out[key + "_image"] = dataset.sort_by_similarity("{sample_id}", k=3, brain_key=key).values("id")
# what the App's text search needs: the run says it takes prompts, and its model reloads by name
results = dataset.load_brain_results("blip_sim")
out["supports_prompts"] = dataset.get_brain_info("blip_sim").config.supports_prompts
out["model"] = type(results.get_model()).__name__
print(json.dumps(out))
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["blip_sim"] == expected["blip_sim"]
    assert out["blip_lance"] == expected["blip_lance"]
    assert itc[:3] == out["blip_lance"][:3]  # two backends, one ITC ranking
    assert len(out["blip_sim_image"]) == 3 and sample_id not in out["blip_sim_image"][1:]
    assert out["supports_prompts"] is True and out["model"] == "BlipItcModel"


def test_image_search_and_rerank(embedded):
    from fiftyone_blip import embeddings

    sample_id = embedded.first().id
    hits = embeddings.search(embedded, sample_id, k=3)
    assert len(hits) == 3 and sample_id not in [h.id for h in hits]
    assert all(-1.0 <= h.score <= 1.0 for h in hits)
    assert fiftyone_blip.search(embedded, sample_id, k=3).values("id") == [h.id for h in hits]
    reranked = embeddings.search(embedded, "a red circle", k=5, rerank=True, shortlist=20)
    assert len(reranked) == 5
    assert all(0.0 <= h.itm <= 1.0 for h in reranked), reranked
    assert [h.score for h in reranked] == sorted((h.score for h in reranked), reverse=True)
    view = embedded.match_tags("test").limit(10)
    assert set(fiftyone_blip.search(view, "a red circle", k=5).values("id")) <= set(view.values("id"))
    assert len(fiftyone_blip.search(embedded, "a red circle", k=20)) == 20  # the view does not stick


def test_attribute_queries_find_the_images_that_hold_the_object(embedded):
    """The images whose ground truth holds the queried object come first: all of them with ITM re-ranking."""
    from fiftyone import ViewField as F

    checked = 0
    for colour, kind in [("red", "circle"), ("blue", "square"), ("green", "triangle"), ("yellow", "star")]:
        holds = (F("label") == kind) & (F("colour") == colour)
        relevant = set(embedded.filter_labels("gt_objects", holds, only_matches=True).values("id"))
        if len(relevant) < 2:
            continue
        k = min(len(relevant), 4)
        itc = set(fiftyone_blip.search(embedded, f"a {colour} {kind}", k=k).values("id"))
        assert len(itc & relevant) >= k / 2, (colour, kind)  # chance: about 0.1 of k
        reranked = fiftyone_blip.search(embedded, f"a {colour} {kind}", k=k, rerank=True)
        assert set(reranked.values("id")) <= relevant, (colour, kind)
        checked += 1
    assert checked >= 2


def test_cli_embed_and_search(embedded):
    runner = CliRunner()
    result = runner.invoke(main, ["embed", embedded.name, "-m", "shapes-tiny", "-q"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert "0 done, 1 failed, 48 skipped of 49" in result.output and "'blip_sim' ready" in result.output
    result = runner.invoke(main, ["search", embedded.name, "a red circle", "-k", "4"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 4
    sample_id, path, score = lines[0].split()
    assert embedded[sample_id].filepath == path and -1 <= float(score) <= 1
    result = runner.invoke(main, ["search", embedded.name, "a red circle", "-k", "2", "--rerank", "--json"])
    assert result.exit_code == 0 and json.loads(result.output.splitlines()[0])["itm"] is not None


def test_bad_input_is_a_one_line_error(embedded, other_matcher, fo):
    import fiftyone.brain as fob

    runner = CliRunner()

    def error(*args):
        result = runner.invoke(main, list(args))
        assert result.exit_code == 1, result.output
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1, result.stderr  # one line, no traceback
        return lines[0]

    assert error("search", embedded.name, "  ") == "Error: `query` must be a non-empty text or a sample id, got '  '"
    assert "has no similarity index 'nope' (indexes: blip_lance, blip_sim)" in error(
        "search", embedded.name, "a red circle", "-b", "nope"
    )
    message = error("search", embedded.name, "a red circle", "-m", str(other_matcher))
    assert "was built with model 'shapes-tiny'" in message
    message = error("embed", embedded.name, "-m", str(other_matcher), "-q")
    assert "already holds an index built with model 'shapes-tiny'" in message
    assert "blip_embedding" in embedded.get_field_schema()  # nothing was touched
    fob.compute_similarity(embedded.exists("blip_embedding"), embeddings="blip_embedding", brain_key="plain")
    assert "not a fiftyone-blip index" in error("search", embedded.name, "a red circle", "-b", "plain")
    embedded.delete_brain_run("plain")
    with pytest.raises(ValueError, match="`k` must be a positive integer"):
        fiftyone_blip.search(embedded, "a red circle", k=0)
    with pytest.raises(ValueError, match=r"`k` must be at most the number of samples searched \(49\), got 50"):
        fiftyone_blip.search(embedded, "a red circle", k=50)


def test_operator_builds_an_index_the_app_can_search(clone, plugin_installed):
    import fiftyone.operators as foo

    from fiftyone_blip import zoo

    result = foo.execute_operator(
        "@fiftyone-blip/blip/compute_embeddings",
        ctx=dict(
            view=clone.limit(12),
            params=dict(model="shapes-tiny", field="blip_embedding", brain_key="app_sim", view_target="CURRENT_VIEW"),
        ),
    )
    result.raise_exceptions()
    assert clone.count("blip_embedding") == 12
    info = clone.get_brain_info("app_sim")
    assert info.config.supports_prompts and info.config.model == zoo.source_url()
    assert info.config.model_kwargs == {"model_name": "blip-itc-shapes-tiny", "model": "shapes-tiny"}
    assert len(clone.sort_by_similarity("a red circle", k=3, brain_key="app_sim")) == 3


def test_a_shard_builds_no_index(clone):
    summary = fiftyone_blip.embed(clone, model="shapes-tiny", shard="0/2", progress=False)
    assert 0 < summary.done < 48
    assert clone.list_brain_runs() == []


def test_search_returns_a_view_best_first_with_scores_in_a_field_it_made(embedded, fo):
    from fiftyone_blip import embeddings

    hits = embeddings.search(embedded, "a red circle", k=5, rerank=True, shortlist=20)
    view = fiftyone_blip.search(embedded, "a red circle", k=5, rerank=True, shortlist=20, score_field="red_score")
    assert isinstance(view, fo.DatasetView)
    assert view.values("id") == [h.id for h in hits]
    assert view.values("red_score") == pytest.approx([h.score for h in hits])
    assert embedded.get_field("red_score").info["capability"] == "search"
    again = fiftyone_blip.search(embedded, "a blue square", k=3, score_field="red_score")
    assert embedded.count("red_score") == 3 and again.values("red_score") == sorted(again.values("red_score"))[::-1]
    embedded.add_sample_field("users_score", fo.FloatField)
    with pytest.raises(ValueError, match="field 'users_score' already exists and fiftyone-blip's search did not"):
        fiftyone_blip.search(embedded, "a red circle", k=3, score_field="users_score")
    assert embedded.count("users_score") == 0
    embedded.delete_sample_fields(["red_score", "users_score"])


def test_an_index_built_by_compute_similarity_with_the_zoo_model_is_searched_and_embedded(clone):
    import fiftyone.brain as fob

    from fiftyone_blip import zoo

    zoo.register_source()
    fob.compute_similarity(clone, model="blip-itc-shapes-tiny", brain_key="native", progress=False)
    found = fiftyone_blip.search(clone, "a red circle", k=5, brain_key="native")
    assert len(found) == 5
    assert len(fiftyone_blip.search(clone, clone.first().id, k=3, brain_key="native")) == 3
    result = CliRunner().invoke(main, ["search", clone.name, "a red circle", "-k", "3", "-b", "native"])
    assert result.exit_code == 0, result.output
    assert len(result.stdout.strip().splitlines()) == 3
    summary = fiftyone_blip.embed(clone, model="shapes-tiny", brain_key="native", progress=False)
    assert summary.done == len(clone)
    # embed's embeddings rank as the zoo model's did: the same model, one ranking
    assert (
        fiftyone_blip.search(clone, "a red circle", k=5, brain_key="native").values("id")[:3] == found.values("id")[:3]
    )


def test_search_names_a_missing_index_before_complaining_about_k(embedded):
    result = CliRunner().invoke(main, ["search", embedded.name, "a red circle", "-b", "nope", "-k", "1000"])
    assert result.exit_code == 1
    assert "has no similarity index 'nope'" in result.stderr


def test_a_second_rerank_over_the_same_images_runs_only_the_itm_pass(base, monkeypatch, tmp_path):
    # every text query ran the vision tower on its whole shortlist again: most of a query's cost
    import shutil

    from fiftyone_blip import embeddings, models

    loaded = models.load_model("shapes-tiny", task="match", cached=False)
    paths = [str(shutil.copy(p, tmp_path)) for p in base.limit(12).values("filepath")]
    itc = np.zeros(len(paths))
    calls = []
    image_embeds = loaded.image_embeds
    monkeypatch.setattr(loaded, "image_embeds", lambda pixels: calls.append(len(pixels)) or image_embeds(pixels))
    first = embeddings.rerank_scores(loaded, "a red circle", paths, itc, batch_size=5)
    assert sum(calls) == 12
    again = embeddings.rerank_scores(loaded, "a red circle", paths, itc, batch_size=5)
    other = embeddings.rerank_scores(loaded, "a blue square", paths[:6], itc[:6], batch_size=4)
    assert sum(calls) == 12  # the states kept: the ITM pass alone
    np.testing.assert_array_equal(first[0], again[0])
    fresh = models.load_model("shapes-tiny", task="match", cached=False)
    np.testing.assert_allclose(
        other[0], embeddings.rerank_scores(fresh, "a blue square", paths[:6], itc[:6])[0], atol=1e-5
    )
    # a file changed on disk is read again; a budget holds the most recent states only
    shutil.copy(paths[1], paths[0])
    embeddings.rerank_scores(loaded, "a red circle", paths[:2], itc[:2])
    assert sum(calls) == 13
    kept = loaded.vision_states
    one = kept.states[next(iter(kept.states))]
    kept.budget = 3 * one.element_size() * one.nelement()
    kept.put(("new", 0, 0), one.clone())
    assert len(kept.states) == 3 and kept.held <= kept.budget and ("new", 0, 0) in kept.states
