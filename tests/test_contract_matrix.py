"""The write contract as a grid: every capability x every kind of view x every operation.

A test per (capability, view) runs the operations in turn through the SDK, on a
12-sample dataset, and after each one asserts the contract (README, "The write
contract"): samples outside the view keep every value; a refused run changes
nothing at all (values, schema, App config, run records); no value another run
wrote is replaced without overwrite; after overwrite every sample of the view
holds the new run's results; a sample is skipped only while its whole result
set is there.

`make test` runs half the cells (see `CELLS`) with the operations every user
meets (first run, re-run, a cleared field of the set, a refused run, a second
run while one holds a field, overwrite); `make test-matrix` runs every cell and
adds a run paused past its claim and an interrupted run resumed
(`FIFTYONE_BLIP_WIDE_MATRIX=1`).
"""

import dataclasses
import os
import threading
from collections.abc import Callable

import pytest

import fiftyone_blip
from fiftyone_blip import engine
from fiftyone_blip import run_records as runs

WIDE = os.environ.get("FIFTYONE_BLIP_WIDE_MATRIX") == "1"
FIELD = "mx"


@dataclasses.dataclass
class Capability:
    name: str
    run: Callable  # (view, variant, **options) -> summary
    variants: tuple[dict, dict]  # two settings: A, then B (another fingerprint)
    required: tuple[str, ...] = (FIELD,)  # the fields a result always holds


def _caption(view, variant, **options):
    return fiftyone_blip.caption(view, model="shapes-tiny", field=FIELD, **variant, **options)


def _heatmaps(view, variant, **options):
    return fiftyone_blip.heatmaps(view, model="shapes-tiny", field=FIELD, text="a red shape", **variant, **options)


def _mislabels(view, variant, **options):
    return fiftyone_blip.find_mislabels(view, "gt_label", model="shapes-tiny", field=FIELD, **variant, **options)["run"]


def _embed(view, variant, **options):
    return fiftyone_blip.embed(view, model="shapes-tiny", field=FIELD, brain_key=None, **variant, **options)


def _ask(view, variant, **options):
    questions, fields = ["what shape is it?", "is there a circle?"], [FIELD, f"{FIELD}_circle"]
    return fiftyone_blip.ask(view, questions, fields, boolean=[False, True], model="shapes-tiny", **variant, **options)


CAPABILITIES = [
    Capability("caption", _caption, ({}, {"strategy": "beam", "num_beams": 2}), (FIELD, f"{FIELD}_confidence")),
    Capability("heatmaps", _heatmaps, ({}, {"map_size": 24}), (FIELD, f"{FIELD}_words", f"{FIELD}_maps")),
    Capability("mislabels", _mislabels, ({}, {"itc": True})),
    Capability("embed", _embed, ({}, {"resize": "letterbox"})),
    Capability("ask", _ask, ({}, {"max_new_tokens": 5}), (FIELD, f"{FIELD}_circle", f"{FIELD}_circle_confidence")),
]


def _saved(dataset):
    dataset.save_view("mx-saved", dataset.skip(4), overwrite=True)
    return dataset.load_saved_view("mx-saved")


VIEWS = {
    "dataset": lambda d: d,
    "match": lambda d: d.match(__import__("fiftyone").ViewField("gt_label.label") != d.first().gt_label.label),
    "limit-over-field": lambda d: d.exists(FIELD, False).limit(8) if d.has_field(FIELD) else d.limit(8),
    "sort_by-limit": lambda d: d.sort_by("gt_caption").limit(8),
    "select_fields": lambda d: d.select_fields(["gt_label"]).limit(8),
    "filter_labels": lambda d: d.filter_labels(
        "gt_objects", __import__("fiftyone").ViewField("label") != "none", only_matches=False
    ).skip(3),
    "group_by": lambda d: d.group_by("gt_label.label"),
    "saved_view": _saved,
}


@pytest.fixture
def small(fo, request):
    base = fiftyone_blip.load_shapes_dataset("tests-shapes", count=48, split="test")
    name = "mx-" + request.node.name[-40:].replace("[", "-").replace("]", "")
    if fo.dataset_exists(name):
        fo.delete_dataset(name)
    dataset = base.limit(12).clone(name)
    yield dataset
    fo.delete_dataset(name)


def _set_fields(dataset) -> list[str]:
    """The fields fiftyone-blip declared for the run into FIELD (their info names it)."""
    dataset.reload()
    return sorted(
        name
        for name, field in dataset.get_field_schema().items()
        if (field.info or {}).get("written_by") == "fiftyone-blip" and (field.info or {}).get("field") == FIELD
    )


def _values(dataset) -> dict:
    """Every sample's values of every field, by id (what a refused run must leave as it was)."""
    dataset.reload()
    names = sorted(dataset.get_field_schema())
    return {doc["_id"]: doc for doc in dataset._sample_collection.find({}, {n: 1 for n in names})}


def _state(dataset):
    dataset.reload()
    return (
        sorted(dataset.get_field_schema()),
        dataset.app_config.to_dict(),
        len(fiftyone_blip.runs(dataset)),
        _values(dataset),
    )


def _ids(view) -> set:
    if getattr(view, "_is_dynamic_groups", False):
        view = view.flatten()
    return set(view.values("id"))


def _fingerprints(dataset, ids) -> dict:
    stamps = dict(zip(*dataset.select(list(ids)).values(["id", f"{FIELD}_run"]))) if ids else {}
    return {i: (s or "").split(":")[0] or None for i, s in stamps.items()}


def _check_outside_unchanged(before: dict, after: dict, inside: set):
    outside = [i for i in before if str(i) not in inside]
    assert [before[i] for i in outside] == [after[i] for i in outside]


def _check_whole(dataset, capability, ids, fingerprint=None):
    """Every sample of `ids` holds one run's whole required set (that run's, where given)."""
    prints = _fingerprints(dataset, ids)
    assert None not in prints.values()
    assert len(set(prints.values())) <= 1
    if fingerprint is not None:
        assert set(prints.values()) <= {fingerprint}
    if ids:
        for name in capability.required:
            assert not any(v is None for v in dataset.select(list(ids)).values(name)), name
    return next(iter(prints.values()), None)


def _run_checked(dataset, capability, make_view, variant, **options):
    """Runs and checks what every run keeps: outside the view nothing changes; inside, whole sets."""
    view = make_view(dataset)
    inside = _ids(view)
    before = _values(dataset)
    summary = capability.run(view, variant, progress=False, **options)
    _check_outside_unchanged(before, _values(dataset), inside)
    assert summary.done + summary.failed + summary.skipped == len(inside)
    return summary, inside


def _refused(dataset, call, match):
    before = _state(dataset)
    with pytest.raises(ValueError, match=match):
        call()
    assert _state(dataset) == before


# `make test`: half the cells, chosen so that every capability meets four kinds of view and every
# kind of view two or three capabilities; `make test-matrix`: every cell, with every operation.
CELLS = [
    pytest.param(capability, view_kind, id=f"{capability.name}-{view_kind}")
    for i, capability in enumerate(CAPABILITIES)
    for j, view_kind in enumerate(VIEWS)
    if WIDE or (i + j) % 2 == 0
]


@pytest.mark.parametrize("capability, view_kind", CELLS)
def test_contract(small, capability, view_kind, monkeypatch):
    make_view = VIEWS[view_kind]
    a, b = capability.variants

    # first run
    summary, inside = _run_checked(small, capability, make_view, a)
    assert summary.done == len(inside)
    fingerprint_a = _check_whole(small, capability, inside)

    # re-run: what holds A's whole set is skipped, the rest is done
    view = make_view(small)
    held = {i for i, f in _fingerprints(small, _ids(view)).items() if f == fingerprint_a}
    summary, inside = _run_checked(small, capability, make_view, a)
    assert (summary.skipped, summary.done) == (len(held & inside), len(inside - held))

    # a field of the set cleared by hand: that sample is done again
    others = [name for name in capability.required if name != FIELD]
    inside = _ids(make_view(small))
    if others and inside:
        victim = sorted(inside)[0]
        small.select(victim).set_values(others[0], [None])
        summary, _ = _run_checked(small, capability, make_view, a)
        assert victim in _ids(small.exists(others[0])) and summary.done >= 1

    # another model or settings, no overwrite: refused where A's results are in the view, else nothing to refuse
    inside = _ids(make_view(small))
    if any(f == fingerprint_a for f in _fingerprints(small, inside).values()):
        _refused(small, lambda: capability.run(make_view(small), b, progress=False), "already holds values")

    # a second run while another live run holds a field of the set: refused, nothing changed
    if not _ids(make_view(small)):
        return  # the view is empty now (`exists(field, False)`): nothing left to run on
    held_field = [name for name in _set_fields(small) if not name.endswith(("_run", "_error"))][-1]
    holder = runs.Lease(small, held_field, None, "another-live-run")
    holder.take()
    try:
        _refused(
            small,
            lambda: capability.run(make_view(small), b, overwrite=True, progress=False),
            "being written by run another-live-run",
        )
    finally:
        holder.release()

    # overwrite with B: every sample of the view holds B's whole set
    summary, inside = _run_checked(small, capability, make_view, b, overwrite=True)
    fingerprint_b = _check_whole(small, capability, inside)
    assert fingerprint_b != fingerprint_a and summary.done == len(inside)

    if not WIDE:
        return

    inside = _ids(make_view(small))
    if len(inside) > 4:
        _paused_past_claim(small, capability, make_view, a, b, monkeypatch)
        _interrupted_then_resumed(small, capability, make_view, a, monkeypatch)


def _paused_past_claim(dataset, capability, make_view, a, b, monkeypatch):
    """A run paused in its second batch past the claim's limit; another run takes the fields over and
    finishes; the paused one wakes, stops, and the other's results stand."""
    monkeypatch.setattr(runs, "HEARTBEAT_SECONDS", 3600.0)
    paused, resume, calls = threading.Event(), threading.Event(), []
    step = engine._step_with_retry

    def pausing(task_step, inputs):
        calls.append(threading.current_thread().name)
        if threading.current_thread().name == "paused-run" and calls.count("paused-run") == 2:
            paused.set()
            resume.wait(120)
        return step(task_step, inputs)

    monkeypatch.setattr(engine, "_step_with_retry", pausing)
    outcome = {}

    def paused_run():
        try:
            capability.run(make_view(dataset), a, overwrite=True, batch_size=2, chunk_size=2, progress=False)
        except Exception as error:  # noqa: BLE001 - read below
            outcome["error"] = error

    thread = threading.Thread(target=paused_run, name="paused-run")
    thread.start()
    assert paused.wait(120)
    stale = runs.now().replace(year=2000)
    runs.collection().update_many({"holders.run_id": {"$exists": True}}, {"$set": {"holders.$[].heartbeat": stale}})
    _, inside = _run_checked(dataset, capability, make_view, b, overwrite=True)
    fingerprint_b = _check_whole(dataset, capability, inside)
    resume.set()
    thread.join(120)
    assert isinstance(outcome.get("error"), runs.ClaimLost), outcome
    _check_whole(dataset, capability, inside, fingerprint_b)
    monkeypatch.setattr(engine, "_step_with_retry", step)


def _interrupted_then_resumed(dataset, capability, make_view, a, monkeypatch):
    """A run stopped in its second batch (Ctrl-C) keeps what it wrote; the same run again finishes the rest."""
    step, calls = engine._step_with_retry, []

    def interrupting(task_step, inputs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return step(task_step, inputs)

    # the view's samples as if never run on: a resume then has its own results to skip
    fresh = dataset.select(list(_ids(make_view(dataset))))
    for name in _set_fields(dataset):
        fresh.set_values(name, [None] * len(fresh))
    monkeypatch.setattr(engine, "_step_with_retry", interrupting)
    with pytest.raises(KeyboardInterrupt):
        capability.run(make_view(dataset), a, batch_size=2, chunk_size=2, progress=False)
    monkeypatch.setattr(engine, "_step_with_retry", step)
    assert fiftyone_blip.runs(dataset)[-1]["status"] == "interrupted"
    summary, inside = _run_checked(dataset, capability, make_view, a)
    assert summary.skipped >= 2 and summary.done + summary.skipped == len(inside)
    _check_whole(dataset, capability, inside)
