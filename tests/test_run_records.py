"""Run records in FiftyOne's run framework: one run per capability and field, its history in
the run's config; concurrent workers, clone, rename, export, delete, and records of older
versions moved in on first use. Against the test database; a toy task (no model)."""

import datetime
import threading

import pytest

import fiftyone_blip
from fiftyone_blip import engine, run_records
from fiftyone_blip.settings import RunOptions

QUIET = dict(progress=False)
KEY = "blip_test_size"


def toy_task(field="size", settings=None):
    """A Task writing len(filepath) into `field`."""
    import fiftyone as fo

    return engine.Task(
        capability="test",
        field=field,
        fields={field: fo.IntField},
        settings=settings or {},
        identity={"model": "toy"},
        prepare=len,
        step=lambda inputs: [{field: x} for x in inputs],
    )


def _history(dataset, key=KEY) -> list[dict]:
    return dataset.get_run_info(key).config.history


def _without_dataset(records):
    return [{k: v for k, v in r.items() if k not in ("dataset", "dataset_id")} for r in records]


def test_each_field_is_one_fiftyone_run_whose_config_holds_every_engine_run(fresh_dataset):
    engine.run(fresh_dataset.limit(20), toy_task(), RunOptions(**QUIET))
    engine.run(fresh_dataset, toy_task(), RunOptions(**QUIET))
    engine.run(fresh_dataset, toy_task("other"), RunOptions(**QUIET))

    assert fresh_dataset.list_runs() == ["blip_test_other", KEY]
    info = fresh_dataset.get_run_info(KEY)
    assert (info.config.method, info.config.capability, info.config.field) == ("fiftyone_blip", "test", "size")
    # this process's dataset object shows the finished state without a reload
    assert [(h["status"], h["done"], h["skipped"], h["total"]) for h in info.config.history] == [
        ("completed", 20, 0, 20),
        ("completed", 28, 20, 48),
    ]
    entry = info.config.history[0]
    assert entry["model"] == "toy" and entry["pid"] and entry["host"] and "fiftyone" in entry["versions"]
    assert entry["ended"] >= entry["started"]

    records = fiftyone_blip.runs(fresh_dataset)
    assert [(r["run_key"], r["field"], r["done"]) for r in records] == [
        (KEY, "size", 20),
        (KEY, "size", 28),
        ("blip_test_other", "other", 48),
    ]
    assert records[0]["dataset"] == fresh_dataset.name and records[0]["capability"] == "test"


def test_runs_are_copied_by_clone_kept_by_rename_and_gone_with_the_dataset(fresh_dataset, fo):
    import fiftyone.core.odm as foo

    engine.run(fresh_dataset, toy_task(), RunOptions(**QUIET))
    before = fiftyone_blip.runs(fresh_dataset)
    name = fresh_dataset.name

    clone = fresh_dataset.clone(name + "-clone")
    try:
        assert clone.list_runs() == [KEY]
        assert _without_dataset(fiftyone_blip.runs(clone)) == _without_dataset(before)
        assert fiftyone_blip.runs(clone)[0]["dataset"] == clone.name
        # the clone's run is its own: a run on the clone leaves the source's history alone
        engine.run(clone, toy_task(), RunOptions(overwrite=True, **QUIET))
        assert len(fiftyone_blip.runs(clone)) == 2 and len(fiftyone_blip.runs(fresh_dataset)) == 1
    finally:
        clone.delete()

    fresh_dataset.name = name + "-renamed"
    try:
        renamed = fo.load_dataset(name + "-renamed")
        assert renamed.list_runs() == [KEY]
        assert [r["dataset"] for r in fiftyone_blip.runs(renamed)] == [name + "-renamed"]
        assert _without_dataset(fiftyone_blip.runs(renamed)) == _without_dataset(before)
    finally:
        fresh_dataset.name = name

    dataset_id = fresh_dataset._doc.id
    fresh_dataset.delete()
    assert foo.get_db_conn().runs.count_documents({"_dataset_id": dataset_id}) == 0


def test_runs_travel_with_a_fiftyone_dataset_export(fresh_dataset, fo, tmp_path):
    engine.run(fresh_dataset, toy_task(), RunOptions(**QUIET))
    before = fiftyone_blip.runs(fresh_dataset)
    fresh_dataset.export(export_dir=str(tmp_path / "export"), dataset_type=fo.types.FiftyOneDataset)
    imported = fo.Dataset.from_dir(str(tmp_path / "export"), fo.types.FiftyOneDataset, name=fresh_dataset.name + "-i")
    try:
        assert imported.list_runs() == [KEY]
        assert _without_dataset(fiftyone_blip.runs(imported)) == _without_dataset(before)
        # the imported results are recognised as this run's: a re-run skips them all
        assert engine.run(imported, toy_task(), RunOptions(**QUIET)).skipped == 48
        assert [r["skipped"] for r in fiftyone_blip.runs(imported)] == [0, 48]
    finally:
        imported.delete()


def test_workers_starting_and_finishing_at_once_lose_no_update(fresh_dataset):
    """Two workers hit the same run document at the same moment, over and over: every entry
    and every count survives, and each field has exactly one run document."""
    import fiftyone.core.odm as foo

    fields = [f"f{i}" for i in range(8)]
    barrier = threading.Barrier(2)
    errors = []

    def worker(name):
        try:
            for field in fields:
                task = toy_task(field)
                barrier.wait(30)  # both register the same new run key at the same moment
                record = run_records.start(fresh_dataset, task, (0, 1), 8, f"{name}-{field}", total=100)
                for done in range(1, 21):
                    barrier.wait(30)
                    record.update(done=done, failed=done // 2)
                barrier.wait(30)
                record.update(status="completed", ended=run_records.now(), done=100 if name == "a" else 50)
        except Exception as error:  # pragma: no cover - reported below
            errors.append(error)
            barrier.abort()

    threads = [threading.Thread(target=worker, args=(name,)) for name in "ab"]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert not errors, errors

    run_documents = foo.get_db_conn().runs.find({"_dataset_id": fresh_dataset._doc.id})
    assert sorted(doc["key"] for doc in run_documents) == sorted(f"blip_test_{f}" for f in fields)
    records = fiftyone_blip.runs(fresh_dataset)
    assert len(records) == 2 * len(fields)
    for record in records:
        expected_done = 100 if record["run_id"].startswith("a-") else 50
        assert (record["status"], record["done"], record["failed"]) == ("completed", expected_done, 10)


def test_a_run_key_held_by_another_run_is_refused_before_any_work(fresh_dataset):
    fresh_dataset.register_run(KEY, fresh_dataset.init_run(method="my-own"))
    with pytest.raises(ValueError, match=f"run key '{KEY}'.*another run"):
        engine.run(fresh_dataset, toy_task(), RunOptions(**QUIET))
    assert "size" not in fresh_dataset.get_field_schema()
    assert fresh_dataset.get_run_info(KEY).config.method == "my-own"


def test_records_of_the_old_collection_are_moved_into_the_runs_on_first_use(fresh_dataset):
    import fiftyone.core.odm as foo

    legacy = foo.get_db_conn()[run_records.LEGACY_COLLECTION]
    started = datetime.datetime(2026, 1, 2, 3, 4, 5)
    old = {
        "run_id": "0123456789abcdef",
        "dataset_id": str(fresh_dataset._doc.id),
        "dataset": "the-old-name",
        "capability": "caption",
        "field": "caption",
        "fingerprint": "abc123def456",
        "model": "shapes-tiny",
        "path": "/somewhere/shapes-tiny",
        "dtype": "float32",
        "settings": {"strategy": "greedy"},
        "shard": None,
        "batch_size": 16,
        "versions": {"fiftyone": "1.22.1"},
        "host": "elsewhere",
        "pid": 4242,
        "started": started,
        "ended": started + datetime.timedelta(seconds=30),
        "status": "completed",
        "total": 48,
        "done": 46,
        "failed": 2,
        "skipped": 0,
    }
    legacy.insert_one(dict(old))
    other = legacy.insert_one({**old, "run_id": "another-dataset", "dataset_id": "0" * 24}).inserted_id
    try:
        (record,) = fiftyone_blip.runs(fresh_dataset)
        expected = {k: v for k, v in old.items() if k != "dataset"}
        assert {k: record[k] for k in expected} == expected
        assert record["run_key"] == "blip_caption_caption" and record["dataset"] == fresh_dataset.name
        assert fresh_dataset.list_runs() == ["blip_caption_caption"]
        # moved, once: the old collection keeps only other datasets' records
        assert legacy.count_documents({"dataset_id": str(fresh_dataset._doc.id)}) == 0
        assert len(fiftyone_blip.runs(fresh_dataset)) == 1
        # a later run joins the same history
        fiftyone_blip.caption(fresh_dataset.limit(4), model="shapes-tiny", progress=False, overwrite=True)
        assert [r["run_id"] for r in fiftyone_blip.runs(fresh_dataset)][0] == old["run_id"]
        assert len(_history(fresh_dataset, "blip_caption_caption")) == 2
    finally:
        legacy.delete_one({"_id": other})


def test_a_killed_workers_entry_becomes_interrupted_and_a_finished_one_stays(fresh_dataset):
    engine.run(fresh_dataset, toy_task(), RunOptions(**QUIET))
    record = run_records.start(fresh_dataset, toy_task(), None, 8, "killed-run", total=48)
    record.update(pid=2**22 + 12345)  # no such process on this host
    statuses = {r["run_id"]: r["status"] for r in fiftyone_blip.runs(fresh_dataset)}
    assert statuses.pop("killed-run") == "interrupted"
    assert list(statuses.values()) == ["completed"]


def test_an_old_record_that_cannot_move_blocks_nothing(fresh_dataset):
    """Issue 24, part 2, item 12: an old record whose run key is a user's own run (`blip_...`, another
    method) stayed unmovable, and every run into any field failed on it; `fiftyone-blip runs`
    printed a traceback. It stays where it is; runs into other fields go on; every command is one line."""
    import fiftyone.core.odm as foo
    from click.testing import CliRunner

    from fiftyone_blip.cli import main

    fresh_dataset.register_run("blip_caption_caption", fresh_dataset.init_run(method="my-own"))
    legacy = foo.get_db_conn()[run_records.LEGACY_COLLECTION]
    old = {"run_id": "cannot-move", "dataset_id": str(fresh_dataset._doc.id), "capability": "caption"}
    old_id = legacy.insert_one({**old, "field": "caption", "started": datetime.datetime(2026, 1, 2)}).inserted_id
    no_field = legacy.insert_one({**old, "run_id": "no-field"}).inserted_id
    try:
        summary = fiftyone_blip.caption(fresh_dataset.limit(2), model="shapes-tiny", field="cap2", progress=False)
        assert summary.done == 2
        assert [r["field"] for r in fiftyone_blip.runs(fresh_dataset)] == ["cap2"]
        result = CliRunner().invoke(main, ["runs", fresh_dataset.name])
        assert result.exit_code == 0 and "cap2" in result.output, result.output
        result = CliRunner().invoke(main, ["caption", fresh_dataset.name, "-m", "shapes-tiny", "-q"])
        assert result.exit_code == 1 and "belongs to another run" in result.output
        assert len(result.output.strip().splitlines()) == 1
        assert legacy.count_documents({"_id": {"$in": [old_id, no_field]}}) == 2  # left as they were
        assert fresh_dataset.get_run_info("blip_caption_caption").config.method == "my-own"
    finally:
        legacy.delete_many({"_id": {"$in": [old_id, no_field]}})


def test_every_command_ends_a_library_error_in_one_line(fresh_dataset, monkeypatch):
    """`runs`, `adapters list` and `app` are not decorated one by one: the group translates errors."""
    from click.testing import CliRunner

    from fiftyone_blip.cli import main

    def broken(*args, **kwargs):
        raise ValueError("the database says no\nsecond line")

    monkeypatch.setattr(run_records, "list_runs", broken)
    result = CliRunner().invoke(main, ["runs", fresh_dataset.name])
    assert result.exit_code == 1 and result.output.strip() == "Error: the database says no"
