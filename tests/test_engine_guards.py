"""The engine's guards: no silent overwrite, resume that sees changed inputs, honest counts,
leases, failed outputs, interruption, unsupported views, progress and paging.

Most tests use a toy Task (no model) so they run in seconds.
"""

import math
import threading

import pytest

import fiftyone_blip
from fiftyone_blip import engine
from fiftyone_blip.settings import RunOptions

QUIET = dict(progress=False)


def toy_task(field="size", step=None, settings=None, identity=None, reads=(), prepare=None, kind=None):
    """A Task writing len(filepath) (or a step's own rows) into `field`."""
    import fiftyone as fo

    def default_step(inputs):
        return [{field: x} for x in inputs]

    return engine.Task(
        capability="test",
        field=field,
        fields={field: kind or fo.IntField},
        settings=settings or {},
        identity=identity or {},
        prepare=prepare or (lambda path, *values: len(path)),
        step=step or default_step,
        reads=reads,
    )


def _never(inputs):
    raise AssertionError("the model step ran")


# ---------------------------------------------------------------- no silent overwrite


def test_a_field_with_values_the_engine_did_not_write_is_refused(fresh_dataset):
    import fiftyone as fo

    before = fresh_dataset.values("gt_caption")
    task = toy_task("gt_caption", step=_never, kind=fo.StringField)
    with pytest.raises(ValueError) as error:
        engine.run(fresh_dataset, task, RunOptions(**QUIET))
    message = str(error.value)
    assert "\n" not in message
    assert "'gt_caption'" in message and "48 samples" in message and "overwrite=True" in message
    assert fresh_dataset.values("gt_caption") == before
    assert fiftyone_blip.runs(fresh_dataset) == []


def test_results_of_other_settings_are_refused_same_settings_skipped_overwrite_recomputes(fresh_dataset):
    first = engine.run(fresh_dataset, toy_task(settings={"a": 1}), RunOptions(**QUIET))
    assert first.done == 48
    with pytest.raises(ValueError, match=r"'size'.*48 samples.*overwrite=True"):
        engine.run(fresh_dataset, toy_task(settings={"a": 2}, step=_never), RunOptions(**QUIET))
    # another model (e.g. another language adapter) is another fingerprint too
    with pytest.raises(ValueError, match="overwrite=True"):
        engine.run(
            fresh_dataset, toy_task(settings={"a": 1}, identity={"language": "de"}, step=_never), RunOptions(**QUIET)
        )
    again = engine.run(fresh_dataset, toy_task(settings={"a": 1}, step=_never), RunOptions(**QUIET))
    assert again.skipped == 48 and again.done == 0
    replaced = engine.run(fresh_dataset, toy_task(settings={"a": 2}), RunOptions(overwrite=True, **QUIET))
    assert replaced.done == 48 and replaced.skipped == 0


# ---------------------------------------------------------------- resume sees changed inputs


def test_changed_read_values_are_recomputed_on_resume(fresh_dataset):
    import fiftyone as fo

    def step(inputs):
        return [{"text_len": len(text)} for text in inputs]

    task = toy_task("text_len", step=step, reads=("gt_caption",), prepare=lambda path, text: text)
    assert engine.run(fresh_dataset, task, RunOptions(**QUIET)).done == 48
    edited = fresh_dataset.limit(3)
    edited.set_values("gt_caption", ["a much longer caption than before"] * 3)
    summary = engine.run(fresh_dataset, task, RunOptions(**QUIET))
    assert (summary.done, summary.skipped) == (3, 45)
    assert edited.values("text_len") == [len("a much longer caption than before")] * 3
    del fo


def test_edited_labels_are_rescored_and_attributes_written_onto_labels_do_not_count(fresh_dataset):
    def step(inputs):
        # like the matcher: a per-label attribute written onto the label it read
        return [{"lab": len(label.label), "gt_label.lab_itm": 0.5} for label in inputs]

    task = toy_task("lab", step=step, reads=("gt_label",), prepare=lambda path, label: label)
    assert engine.run(fresh_dataset, task, RunOptions(**QUIET)).done == 48
    assert engine.run(fresh_dataset, task, RunOptions(**QUIET)).skipped == 48
    sample = fresh_dataset.first()
    sample.gt_label.label = "renamed-label"
    sample.save()
    summary = engine.run(fresh_dataset, task, RunOptions(**QUIET))
    assert (summary.done, summary.skipped) == (1, 47)
    assert fresh_dataset.first().lab == len("renamed-label")


def test_new_weights_in_the_same_folder_change_the_identity(tmp_path, tiny_random_captioner):
    import os
    import shutil

    from fiftyone_blip import models

    folder = tmp_path / "model"
    shutil.copytree(tiny_random_captioner, folder)
    first = models.load_model(str(folder), task="caption").identity
    weights = folder / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data)  # same bytes, new file: a retrained model saved over the old one
    os.utime(weights, ns=(1, 1))
    second = models.load_model(str(folder), task="caption").identity
    assert first != second


# ---------------------------------------------------------------- counts are what was stored


def test_samples_deleted_during_a_run_are_not_counted_done(fresh_dataset):
    victims = fresh_dataset.skip(40).values("id")
    calls = []

    def step(inputs):
        calls.append(1)
        if len(calls) == 1:
            fresh_dataset.delete_samples(victims)
        return [{"size": x} for x in inputs]

    summary = engine.run(fresh_dataset, toy_task(step=step), RunOptions(batch_size=8, chunk_size=1000, **QUIET))
    assert summary.done == 40 == fresh_dataset.count("size")
    assert fiftyone_blip.runs(fresh_dataset)[-1]["done"] == 40


def test_a_dataset_deleted_mid_run_stops_with_one_line_and_leaves_no_record(fresh_dataset):
    import fiftyone as fo
    import fiftyone.core.odm as foo

    from fiftyone_blip import run_records

    name, dataset_id = fresh_dataset.name, fresh_dataset._doc.id
    calls = []

    def step(inputs):
        calls.append(1)
        if len(calls) == 3:
            fo.delete_dataset(name)
        return [{"size": x} for x in inputs]

    with pytest.raises(RuntimeError) as error:
        engine.run(fresh_dataset, toy_task(step=step), RunOptions(batch_size=8, chunk_size=8, **QUIET))
    assert "\n" not in str(error.value) and "deleted" in str(error.value)
    # the run record went with the dataset (FiftyOne deletes a dataset's runs), and so did the lease
    assert foo.get_db_conn().runs.count_documents({"_dataset_id": dataset_id}) == 0
    assert run_records.collection().count_documents({}) == 0
    assert len(calls) == 3


# ---------------------------------------------------------------- one run per field at a time


def test_a_second_run_into_the_same_field_is_refused_while_the_first_runs(fresh_dataset):
    entered, release = threading.Event(), threading.Event()
    outcome = {}

    def slow(inputs):
        entered.set()
        release.wait(60)
        return [{"size": x} for x in inputs]

    def first():
        outcome["summary"] = engine.run(fresh_dataset, toy_task(step=slow), RunOptions(batch_size=8, **QUIET))

    thread = threading.Thread(target=first)
    thread.start()
    try:
        assert entered.wait(60)
        running = fiftyone_blip.runs(fresh_dataset)[-1]["run_id"]
        with pytest.raises(ValueError) as error:
            engine.run(fresh_dataset, toy_task(step=_never), RunOptions(**QUIET))
        assert "\n" not in str(error.value) and running in str(error.value)
        with pytest.raises(ValueError, match=running):
            engine.run(fresh_dataset, toy_task(step=_never), RunOptions(shard="1/3", **QUIET))
    finally:
        release.set()
        thread.join(60)
    assert outcome["summary"].done == 48
    # once it ended, the field is free again
    assert engine.run(fresh_dataset, toy_task(step=_never), RunOptions(**QUIET)).skipped == 48


def test_shards_of_one_split_run_side_by_side_and_a_dead_holder_is_taken_over(fresh_dataset):
    from fiftyone_blip import run_records

    entered, release = threading.Event(), threading.Event()

    def slow(inputs):
        entered.set()
        release.wait(60)
        return [{"size": x} for x in inputs]

    thread = threading.Thread(
        target=engine.run, args=(fresh_dataset, toy_task(step=slow), RunOptions(shard="0/2", **QUIET))
    )
    thread.start()
    try:
        assert entered.wait(60)
        other = engine.run(fresh_dataset, toy_task(), RunOptions(shard="1/2", **QUIET))
        assert other.done > 0
    finally:
        release.set()
        thread.join(60)
    # a holder whose process is gone does not block the field
    dead = {
        "run_id": "dead-run",
        "shard": None,
        "host": run_records.platform.node(),
        "pid": 2**22 + 12345,
        "heartbeat": run_records.now(),
    }
    run_records.collection().update_one(
        {"_id": run_records.lease_key(str(fresh_dataset._doc.id), "size")},
        {"$push": {"holders": dead}, "$inc": {"version": 1}},
        upsert=True,
    )
    assert engine.run(fresh_dataset, toy_task(), RunOptions(overwrite=True, **QUIET)).done == 48


# ---------------------------------------------------------------- failed outputs


def test_empty_and_non_finite_outputs_are_errors_and_resume_retries_them(fresh_dataset):
    import fiftyone as fo

    broken = {"on": True}

    def step(inputs):
        rows = []
        for i in range(len(inputs)):
            if broken["on"] and i == 0:
                rows.append({"text": "", "text_confidence": 0.5})
            elif broken["on"] and i == 1:
                rows.append({"text": "a caption", "text_confidence": float("nan")})
            else:
                rows.append({"text": "a caption", "text_confidence": 0.5})
        return rows

    task = toy_task("text", step=step, kind=fo.StringField)
    task.fields["text_confidence"] = fo.FloatField
    summary = engine.run(fresh_dataset, task, RunOptions(batch_size=8, **QUIET))
    assert (summary.done, summary.failed) == (36, 12)
    errors = [e for e in fresh_dataset.values("text_error") if e]
    assert errors.count("empty output") == 6
    assert sum(e.startswith("non-finite output") for e in errors) == 6
    assert fresh_dataset.count("text") == 36
    assert not any(c is not None and math.isnan(c) for c in fresh_dataset.values("text_confidence"))
    broken["on"] = False
    again = engine.run(fresh_dataset, task, RunOptions(batch_size=8, **QUIET))
    assert (again.done, again.skipped) == (12, 36)


def test_an_embedding_with_non_finite_values_is_an_error(fresh_dataset):
    import fiftyone as fo
    import numpy as np

    from fiftyone_blip import embeddings

    def step(inputs):
        vector = np.ones(4, dtype=np.float32)
        vector[0] = np.inf
        return [{"vec": embeddings.serialize(vector)} for _ in inputs]

    summary = engine.run(fresh_dataset, toy_task("vec", step=step, kind=fo.VectorField), RunOptions(**QUIET))
    assert summary.done == 0 and summary.failed == 48
    assert fresh_dataset.count("vec") == 0


# ---------------------------------------------------------------- Ctrl-C


def test_keyboard_interrupt_records_interrupted_and_keeps_what_was_computed(fresh_dataset):
    calls = []

    def step(inputs):
        if len(calls) == 2:
            raise KeyboardInterrupt
        calls.append(1)
        return [{"size": x} for x in inputs]

    with pytest.raises(KeyboardInterrupt):
        engine.run(fresh_dataset, toy_task(step=step), RunOptions(batch_size=8, chunk_size=1000, **QUIET))
    assert fresh_dataset.count("size") == 16
    record = fiftyone_blip.runs(fresh_dataset)[-1]
    assert record["status"] == "interrupted" and record["done"] == 16


# ---------------------------------------------------------------- views it cannot write back


def test_patches_views_run_on_their_labels_and_frames_and_clips_views_stay_refused(fresh_dataset, fo, tmp_path):
    patches = fresh_dataset.limit(2).to_patches("gt_objects")
    task = toy_task(prepare=lambda region: len(region.box), step=lambda inputs: [{"size": x} for x in inputs])
    summary = engine.run(patches, task, RunOptions(**QUIET))  # each patch's input: its object's region
    assert summary.done == len(patches) and "size" not in fresh_dataset.get_field_schema()
    assert fresh_dataset.limit(2).values("gt_objects.detections.size", unwind=True) == [4] * len(patches)
    videos = fo.Dataset()
    try:
        support = fo.TemporalDetections(detections=[fo.TemporalDetection(label="a", support=[1, 5])])
        videos.add_sample(fo.Sample(filepath=str(tmp_path / "clip.mp4"), events=support))
        for view, kind in ((videos.to_clips("events"), "clips"), (videos.to_frames(sample_frames=False), "frames")):
            with pytest.raises(ValueError, match=f"{kind} views are not supported") as error:
                engine.run(view, toy_task(step=_never), RunOptions(**QUIET))
            assert "\n" not in str(error.value)
            assert "size" not in videos.get_field_schema() and "size" not in videos.get_frame_field_schema()
    finally:
        videos.delete()


def test_video_datasets_and_remote_media_are_refused_before_any_work(fo, tmp_path):
    dataset = fo.Dataset()
    try:
        dataset.add_sample(fo.Sample(filepath=str(tmp_path / "clip.mp4")))
        with pytest.raises(ValueError, match="video samples are not supported") as error:
            engine.run(dataset, toy_task(step=_never), RunOptions(**QUIET))
        assert "\n" not in str(error.value)
    finally:
        dataset.delete()
    dataset = fo.Dataset()
    try:
        dataset.add_samples(
            [fo.Sample(filepath=str(tmp_path / "a.jpg")), fo.Sample(filepath="https://example.com/b.jpg")],
            progress=False,
        )
        with pytest.raises(ValueError, match="remote media is not supported: download it first"):
            engine.run(dataset, toy_task(step=_never), RunOptions(**QUIET))
        # stored as the URL itself (as a database written by other tools holds it)
        first = dataset.first()
        dataset._sample_collection.update_one({"_id": first._id}, {"$set": {"filepath": "s3://bucket/a.jpg"}})
        dataset.delete_samples(dataset.skip(1))
        with pytest.raises(ValueError, match="remote media is not supported: download it first"):
            engine.run(dataset, toy_task(step=_never), RunOptions(**QUIET))
        assert "size" not in dataset.get_field_schema()
    finally:
        dataset.delete()


# ---------------------------------------------------------------- progress


def test_fiftyone_style_progress_callbacks_are_honoured(fresh_dataset):
    import fiftyone as fo

    seen = []
    engine.run(fresh_dataset, toy_task(), RunOptions(batch_size=8, progress=fo.report_progress(seen.append, n=4)))
    assert len(seen) == 4 and seen[-1].complete


@pytest.mark.parametrize("progress", [None, True])
def test_progress_bars_follow_fiftyone_config(fresh_dataset, progress, capsys, monkeypatch):
    import fiftyone as fo

    monkeypatch.setattr(fo.config, "show_progress_bars", False)
    engine.run(fresh_dataset, toy_task(), RunOptions(progress=progress))
    captured = capsys.readouterr()
    assert "sample" not in captured.err + captured.out


# ---------------------------------------------------------------- paging


def test_a_run_pages_through_the_collection(fresh_dataset, monkeypatch):
    monkeypatch.setattr(engine, "PAGE_SIZE", 10)
    held = []
    original = engine._read_page

    def spy(*args, **kwargs):
        page = original(*args, **kwargs)
        held.append(len(page))
        return page

    monkeypatch.setattr(engine, "_read_page", spy)
    summary = engine.run(fresh_dataset, toy_task(), RunOptions(batch_size=4, **QUIET))
    assert summary.done == 48 and fresh_dataset.count("size") == 48
    assert max(held) <= 10 and sum(held) == 48


def test_decode_threads_scale_with_the_cores(monkeypatch):
    monkeypatch.setattr(engine, "_cores", lambda: 32)
    assert engine.default_workers() == 32


def test_german_captions_into_a_field_of_english_ones_are_refused(fresh_dataset):
    view = fresh_dataset.limit(4)
    fiftyone_blip.caption(view, model="shapes-tiny", progress=False)
    english = view.values("caption")
    with pytest.raises(ValueError, match=r"'caption'.*4 samples.*overwrite=True"):
        fiftyone_blip.caption(view, model="shapes-tiny", language="de", field="caption", progress=False)
    assert view.values("caption") == english
    german = fiftyone_blip.caption(
        view, model="shapes-tiny", language="de", field="caption", overwrite=True, progress=False
    )
    assert german.done == 4 and view.values("caption") != english
