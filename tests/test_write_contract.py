"""The write contract the engine keeps for every capability (README, "What fiftyone-blip promises").

Each test here was seen failing on the code before the contract moved into the engine.
"""

import threading

import pytest

import fiftyone_blip
from fiftyone_blip import engine, models
from fiftyone_blip import run_records as runs
from fiftyone_blip.settings import RunOptions

QUIET = dict(progress=False)


def toy_task(field="size", step=None, settings=None, fields=None):
    """A Task writing len(filepath) (or a step's own rows) into `field`."""
    import fiftyone as fo

    return engine.Task(
        capability="test",
        field=field,
        fields=fields or {field: fo.IntField},
        settings=settings or {},
        identity={},
        prepare=lambda path: len(path),
        step=step or (lambda inputs: [{field: x} for x in inputs]),
    )


def ask_shape_and_circle(samples):
    """Two questions into `shape` (free answer) and `circle` (yes/no, with `circle_confidence`)."""
    questions, fields = ["what shape is it?", "is there a circle?"], ["shape", "circle"]
    return fiftyone_blip.ask(samples, questions, fields, boolean=[False, True], model="shapes-tiny", **QUIET)


def _state(dataset):
    """What a refused run must leave as it was: schema, App config, runs, field infos."""
    dataset.reload()
    schema = dataset.get_field_schema(flat=True)
    return (
        sorted(schema),
        dataset.app_config.to_dict(),
        dataset.list_runs(),
        {name: (field.info, field.description) for name, field in schema.items()},
    )


# ---------------------------------------------------------------- 1. checks before the model loads


def test_a_type_clash_is_refused_before_any_weights_load(fresh_dataset, monkeypatch):
    def no_weights(*args, **kwargs):
        raise AssertionError("weights were loaded before the refusal")

    monkeypatch.setattr(models, "load_model", no_weights)
    with pytest.raises(ValueError, match=r"'gt_label' already exists as a EmbeddedDocumentField"):
        fiftyone_blip.caption(fresh_dataset, model="shapes-tiny", field="gt_label", **QUIET)
    with pytest.raises(ValueError, match=r"'gt_caption' already holds values on 48 samples"):
        fiftyone_blip.caption(fresh_dataset, model="shapes-tiny", field="gt_caption", **QUIET)


def test_words_the_model_cannot_write_are_refused_before_any_weights_load(fresh_dataset, monkeypatch):
    def no_weights(*args, **kwargs):
        raise AssertionError("weights were loaded before the refusal")

    monkeypatch.setattr(models, "load_model", no_weights)
    with pytest.raises(ValueError, match=r"`answers`: 'zqxj' is not in the model's vocabulary"):
        fiftyone_blip.ask(
            fresh_dataset, "what shape is it?", "shape", answers=["circle", "zqxj"], model="shapes-tiny", **QUIET
        )
    with pytest.raises(ValueError, match=r"`ban_words`: 'zqxj' is not in the model's vocabulary"):
        fiftyone_blip.caption(fresh_dataset, model="shapes-tiny", ban_words=["zqxj"], **QUIET)
    assert "shape" not in fresh_dataset.get_field_schema() and "caption" not in fresh_dataset.get_field_schema()


def test_a_refusal_names_the_settings_that_differ_from_the_run_that_wrote_the_field(fresh_dataset):
    view = fresh_dataset.limit(3)
    fiftyone_blip.caption(view, model="shapes-tiny", **QUIET)
    with pytest.raises(ValueError) as refused:
        fiftyone_blip.caption(view, model="shapes-tiny", strategy="beam", num_beams=3, **QUIET)
    message = str(refused.value)
    assert "'caption' already holds values on 3 samples" in message
    assert (
        "they came from 'shapes-tiny' with num_beams=None, strategy='greedy'; this run: num_beams=3, strategy='beam'"
        in (message)
    )
    # values a user wrote: no run to name
    fresh_dataset.add_sample_field("notes", __import__("fiftyone").StringField)
    view.set_values("notes", ["a", "b", "c"])
    with pytest.raises(
        ValueError,
        match=r"'notes' already holds values on 3 samples that were not written by "
        r"fiftyone-blip with this model and these settings; pass overwrite",
    ):
        fiftyone_blip.caption(view, model="shapes-tiny", field="notes", **QUIET)


def test_a_bundled_model_installed_elsewhere_is_the_same_model_and_other_weights_are_not(
    fresh_dataset, monkeypatch, tmp_path
):
    # the bundled model's identity held its install path and files' mtimes: another checkout or
    # environment (or a reinstall) made every earlier result foreign, and a rerun refused
    import os
    import shutil

    view = fresh_dataset.limit(2)
    fiftyone_blip.caption(view, model="shapes-tiny", **QUIET)
    moved = tmp_path / "captioner"
    shutil.copytree(models.BUNDLED["shapes-tiny"]["caption"], moved)
    os.utime(moved / "model.safetensors", (1, 1))
    monkeypatch.setitem(models.BUNDLED["shapes-tiny"], "caption", moved)
    again = fiftyone_blip.caption(view, model="shapes-tiny", **QUIET)
    assert again.skipped == 2 and again.done == 0
    # other weights under the bundled name (a package update) are not: their results are recomputed
    weights = moved / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-4] + b"\0\0\0\0")
    recomputed = fiftyone_blip.caption(view, model="shapes-tiny", **QUIET)
    assert recomputed.done == 2 and recomputed.skipped == 0


# ---------------------------------------------------------------- 2. a refused run changes nothing


def test_a_refused_run_changes_nothing(fresh_dataset, tmp_path):
    import fiftyone as fo

    fresh_dataset.add_sample_field("cap", fo.StringField)
    fresh_dataset.limit(3).set_values("cap", ["mine", "mine too", "and mine"])
    fresh_dataset.add_sample_field("hm_words", fo.ListField, subfield=fo.StringField)
    fresh_dataset.limit(2).set_values("hm_words", [["my", "words"], ["mine"]])
    fresh_dataset.add_sample_field("circle_confidence", fo.FloatField)
    fresh_dataset.limit(1).set_values("circle_confidence", [0.9])
    maps_dir = tmp_path / "maps"
    before = _state(fresh_dataset)
    with pytest.raises(ValueError, match=r"'cap' already holds values on 3 samples"):
        fiftyone_blip.caption(fresh_dataset, model="shapes-tiny", field="cap", **QUIET)
    with pytest.raises(ValueError, match=r"'hm_words' already holds values on 2 samples"):
        fiftyone_blip.heatmaps(
            fresh_dataset, model="shapes-tiny", field="hm", text="a shape", maps_dir=str(maps_dir), **QUIET
        )
    with pytest.raises(ValueError, match=r"'circle_confidence' already holds values on 1 samples"):
        ask_shape_and_circle(fresh_dataset)
    assert _state(fresh_dataset) == before
    assert not maps_dir.exists()
    assert fresh_dataset.limit(3).values("cap") == ["mine", "mine too", "and mine"]


# ---------------------------------------------------------------- 3. a run writes only while it holds its claim


def test_a_run_whose_claim_was_taken_over_writes_nothing_more(fresh_dataset, monkeypatch):
    monkeypatch.setattr(runs, "HEARTBEAT_SECONDS", 3600.0)  # the paused run's beat must not revive it
    paused, resume = threading.Event(), threading.Event()
    calls = []

    def slow_step(inputs):
        calls.append(len(inputs))
        if len(calls) == 2:
            paused.set()
            resume.wait(60)
        return [{"size": -1} for _ in inputs]

    outcome = {}

    def first_run():
        try:
            engine.run(fresh_dataset, toy_task(step=slow_step), RunOptions(batch_size=8, chunk_size=8, **QUIET))
        except Exception as error:  # noqa: BLE001 - the test reads it
            outcome["error"] = error

    thread = threading.Thread(target=first_run)
    thread.start()
    assert paused.wait(60)
    # the first run sleeps past the lease's staleness limit (a closed laptop lid)
    key = runs.lease_key(str(fresh_dataset._doc.id), "size")
    stale = runs.now().replace(year=2000)
    runs.collection().update_one({"_id": key}, {"$set": {"holders.$[].heartbeat": stale}})
    second = engine.run(fresh_dataset, toy_task(settings={"b": 1}), RunOptions(overwrite=True, **QUIET))
    assert second.done == 48
    resume.set()
    thread.join(60)
    assert isinstance(outcome.get("error"), runs.ClaimLost)
    assert "claim on field 'size' lost" in str(outcome["error"])
    assert -1 not in fresh_dataset.values("size")  # the second run's results stand
    statuses = [r["status"] for r in fiftyone_blip.runs(fresh_dataset)]
    assert statuses == ["claim lost", "completed"] or statuses == ["completed", "claim lost"]


# ---------------------------------------------------------------- 4. done means the whole set


def test_a_sample_is_done_only_when_every_field_of_the_set_holds_its_result(fresh_dataset):
    view = fresh_dataset.limit(6)
    first = ask_shape_and_circle(view)
    assert first.done == 6
    answers = view.values("circle")
    view.set_values("circle", [None] * 6)
    again = ask_shape_and_circle(view)
    assert (again.done, again.skipped) == (6, 0)
    assert view.values("circle") == answers
    assert ask_shape_and_circle(view).skipped == 6


# ---------------------------------------------------------------- 5. overwrite replaces the whole set


def test_overwrite_with_another_storage_leaves_nothing_of_the_old_run(fresh_dataset, tmp_path):
    import fiftyone as fo

    view = fresh_dataset.limit(4)
    fiftyone_blip.caption(view, model="shapes-tiny", **QUIET)
    fiftyone_blip.heatmaps(view, model="shapes-tiny", field="hm", maps_dir=str(tmp_path), **QUIET)
    assert all(view.values("hm_word_maps"))
    fresh_dataset.add_sample_field("hm_match", fo.FloatField)  # a user's own field beside the run's
    fresh_dataset.set_values("hm_match", [0.5] * len(fresh_dataset))
    fiftyone_blip.heatmaps(view, model="shapes-tiny", field="hm", overwrite=True, **QUIET)
    assert view.values("hm_word_maps") == [None] * 4  # the readers would prefer these stale maps
    assert all(m is not None for m in view.values("hm_maps"))
    sample = view.first()
    assert len(fiftyone_blip.word_heatmaps.word_maps(sample, "hm")[0]) == len(sample.hm_words)
    # the user's field is not the run's: untouched
    assert fresh_dataset.values("hm_match") == [0.5] * len(fresh_dataset)


# ---------------------------------------------------------------- 6. the view is fixed when the run starts


@pytest.mark.parametrize("shape", ["exists", "match", "sort_by"])
def test_a_run_processes_exactly_the_samples_its_view_held_at_the_start(fresh_dataset, monkeypatch, shape):
    from fiftyone import ViewField as F

    monkeypatch.setattr(engine, "PAGE_SIZE", 5)
    fresh_dataset.add_sample_field("size", __import__("fiftyone").IntField)
    views = {
        "exists": lambda d: d.exists("size", False).limit(20),
        "match": lambda d: d.match(F("size") == None).limit(20),  # noqa: E711
        "sort_by": lambda d: d.sort_by("size").limit(20),
    }
    view = views[shape](fresh_dataset)
    held = set(view.values("id"))
    summary = engine.run(view, toy_task(), RunOptions(batch_size=4, chunk_size=4, **QUIET))
    assert summary.done == 20
    assert set(fresh_dataset.exists("size").values("id")) == held


# ---------------------------------------------------------------- views of FiftyOne's own kinds


def test_a_group_by_view_runs_on_its_samples(fresh_dataset):
    view = fresh_dataset.group_by("gt_label.label")
    summary = engine.run(view, toy_task(), RunOptions(**QUIET))
    assert summary.done == 48 and fresh_dataset.count("size") == 48


# ---------------------------------------------------------------- the App's sidebar shows every field of a set


def test_answers_and_heatmaps_have_their_sidebar_groups(fresh_dataset):
    view = fresh_dataset.limit(2)
    ask_shape_and_circle(view)
    fiftyone_blip.caption(view, model="shapes-tiny", **QUIET)
    fiftyone_blip.heatmaps(view, model="shapes-tiny", **QUIET)
    fresh_dataset.reload()
    groups = {g.name: g.paths for g in fresh_dataset.app_config.sidebar_groups}
    assert groups["BLIP answers"] == ["shape", "circle", "circle_confidence"]
    assert set(groups["BLIP heatmaps"]) == {"heatmap", "heatmap_words", "heatmap_text", "heatmap_maps", "heatmap_probs"}


# ---------------------------------------------------------------- label QA tags of one field stay with it


def test_flagging_one_label_field_keeps_the_tags_of_another(fresh_dataset):
    captions = fiftyone_blip.find_mislabels(fresh_dataset, "gt_caption", model="shapes-tiny", top_k=5, **QUIET)
    tagged = set(fresh_dataset.match_tags("mislabel").values("id"))
    assert captions["flagged_samples"] == 5 and len(tagged) == 5
    fiftyone_blip.find_mislabels(fresh_dataset, "gt_label", model="shapes-tiny", top_k=3, **QUIET)
    flagged_labels = set(fresh_dataset.match(__import__("fiftyone").ViewField("gt_label_match_flagged")).values("id"))
    assert set(fresh_dataset.match_tags("mislabel").values("id")) == tagged | flagged_labels
    # re-flagging the captions with fewer flags removes only the caption flags it had set
    fiftyone_blip.flag_mislabels(fresh_dataset, "gt_caption", top_k=1)
    kept = set(fresh_dataset.match(__import__("fiftyone").ViewField("gt_caption_match_flagged")).values("id"))
    assert set(fresh_dataset.match_tags("mislabel").values("id")) == kept | flagged_labels
