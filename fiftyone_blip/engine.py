"""The streaming engine every capability runs on.

    view -> (id, filepath) -> decode threads -> batches -> model step
         -> {sample id: result} -> bulk writes by id, in chunks -> run record

A capability (captioning, embeddings, ...) supplies a `Task`: how to turn a
file into a model input, how to run a batch, and which fields it writes. The
engine does the rest:

- decoding runs in a thread pool ahead of the model, in a bounded window;
- results are written by sample id in bulk writes of bounded size and age,
  never per sample and never all at the end, so a crash loses at most the
  last unwritten chunk; each sample's fields are set in one atomic update;
- each sample records which model and settings produced its result (a short
  fingerprint), so a re-run skips what is done and finishes the rest;
- `shard="I/N"` splits a collection with no overlap and no gaps;
- a file that cannot be decoded gets an error entry, not a crash;
- a CUDA out-of-memory error halves the batch and retries;
- every run leaves a record in its field's FiftyOne run (see `list_runs`).
"""

from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import datetime
import functools
import hashlib
import json
import math
import os
import re
import time
import uuid
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np

from fiftyone_blip import app_config, fields, patches
from fiftyone_blip import run_records as runs
from fiftyone_blip.progress import Progress


@dataclasses.dataclass
class Task:
    """What a capability gives the engine: its result set, what changes a result, and its model step.

    Attributes:
        capability: a short name ("caption").
        field: the main result field: its `{field}_error` and `{field}_run`
            (the stamp) speak for the whole result set.
        fields: the result set: every sample field the task writes, the main
            one included, name -> FiftyOne field class, or (class, keyword
            arguments of `add_sample_field`, e.g. `embedded_doc_type`). The
            engine checks, leases, declares, resumes and replaces them as one.
        settings: the settings that change results (they go in the fingerprint).
        identity: which weights produce results (model, path, revision, dtype),
            known before the weights load (`models.reference`).
        prepare: file path -> model input (runs in decode threads; raises
            `images.ImageDecodeError` for a bad file).
        step: list of inputs -> list of {field: value} (runs on the model).
        bind: loads the model and returns (prepare, step); the engine calls it
            after every check that needs no model, and writes nothing before
            it returns (None: `prepare` and `step` are given).
        reads: sample fields `prepare` needs beside the file path (e.g. the
            caption a heatmap explains); with any, `prepare(path, *values)`.
        required: the fields of the set that must hold a value for a sample
            to count as done (None: all of `fields`).
        label_attributes: per-label attributes the step writes (dotted paths
            such as "gt.detections.gt_match_itm") -> field class.
        siblings: fields an earlier run into the same main field may have
            written with other settings (another storage of heatmaps): a new
            result clears them where fiftyone-blip wrote them for this field.
        descriptions: what each written field holds, name (a dotted path for
            label attributes) -> one sentence: the fields' FiftyOne
            `description`; the engine describes `{field}_error` and `{field}_run`.
        labels: set by the engine on a patches view (`on_labels`): the whole
            result set is then attributes of each patch's label in the source
            dataset (`patches.Labels`), and the label is the unit of work.
        no_patches: why the capability does not run on patches views ("": it does).
    """

    capability: str
    field: str
    fields: dict[str, Any]
    settings: dict
    identity: dict
    prepare: Callable[[str], Any] | None = None
    step: Callable[[list], list[dict]] | None = None
    bind: Callable[[], tuple[Callable, Callable]] | None = None
    reads: tuple[str, ...] = ()
    required: tuple[str, ...] | None = None
    label_attributes: dict[str, Any] = dataclasses.field(default_factory=dict)
    siblings: tuple[str, ...] = ()
    descriptions: dict[str, str] = dataclasses.field(default_factory=dict)
    labels: Any = None
    no_patches: str = ""

    def __post_init__(self):
        if self.field not in self.fields:
            raise ValueError(f"a task's `fields` must hold its main field {self.field!r}")
        if (self.bind is None) == (self.step is None):
            raise ValueError("a task gives either `bind` or its `prepare` and `step`")

    def on_labels(self, labels) -> Task:
        """This task writing to the labels of a patches view (`patches.Labels`); its settings name the
        label fields and the context, so they are in the fingerprint and the run record."""
        if self.no_patches:
            raise ValueError(self.no_patches)
        if self.label_attributes:
            raise ValueError(f"{self.capability} writes per-label attributes of its own: it does not run on patches")
        settings = {**self.settings, "patches": list(labels.fields), "context": labels.context}
        return dataclasses.replace(self, labels=labels, settings=settings)

    @property
    def record_field(self) -> str:
        """The name of the result set in run keys, records and leases' messages: the main field, or for
        labels, the label fields and the attribute ("ground_truth__caption")."""
        if self.labels is None:
            return self.field
        return f"{'_'.join(self.labels.fields)}__{self.field}"

    def stored(self, name: str) -> list[str]:
        """Where a field of the set is stored: the sample field, or the attribute on every label field."""
        return [name] if self.labels is None else self.labels.attributes([name])

    @property
    def error_field(self) -> str:
        return f"{self.field}_error"

    @property
    def run_field(self) -> str:
        return f"{self.field}_run"

    @property
    def result_fields(self) -> dict[str, Any]:
        """The whole result set as declared: the task's fields, the main one, `_error` and `_run`."""
        import fiftyone as fo

        return {**self.fields, self.error_field: fo.StringField, self.run_field: fo.StringField}

    @property
    def done_fields(self) -> tuple[str, ...]:
        """The fields that must hold a value, beside this run's stamp, for a sample to be done."""
        return tuple(self.required) if self.required is not None else tuple(self.fields)

    @property
    def fingerprint(self) -> str:
        """Which model and settings: results of another fingerprint are refused without `overwrite`.

        The weights' version (`identity["weights"]`, a local folder's files) is
        left out: it goes in each sample's stamp, so weights saved again into
        the same folder recompute the results instead of refusing them.
        """
        identity = {k: v for k, v in self.identity.items() if k != "weights"}
        blob = json.dumps({"identity": identity, "settings": self.settings}, sort_keys=True, default=str)
        return hashlib.sha1(blob.encode()).hexdigest()[:12]

    def stamp(self, read_values: tuple = ()) -> str:
        """What `{field}_run` holds for a result: the fingerprint, then a digest of what it was
        computed from (the weights' version and the sample values in `reads`) when there is any."""
        weights = self.identity.get("weights")
        if weights is None and not self.reads:
            return self.fingerprint
        return f"{self.fingerprint}:{input_digest((weights, *read_values))}"

    @property
    def run_stamp(self) -> str:
        """The stamp of every result of a task that reads no sample fields."""
        if self.reads:
            raise ValueError("a task that reads sample fields has one stamp per sample")
        return self.stamp()

    def bound(self) -> Task:
        """This task with its model step: loads the model where `bind` says how."""
        if self.bind is None:
            return self
        prepare, step = self.bind()
        return dataclasses.replace(self, prepare=prepare, step=step, bind=None)


@dataclasses.dataclass
class RunSummary:
    """Counts and timing of one engine run."""

    run_id: str
    field: str
    total: int
    done: int
    failed: int
    skipped: int
    seconds: float
    model_seconds: float

    def __str__(self) -> str:
        rate = self.done / self.seconds if self.seconds else 0.0
        return (
            f"{self.done} done, {self.failed} failed, {self.skipped} skipped of {self.total} "
            f"in {self.seconds:.1f} s ({rate:.1f} samples/s) -> field '{self.field}'"
        )


def shard_of(sample_id: str, count: int) -> int:
    """The shard a sample belongs to: a pure function of its id, so workers agree."""
    return int(sample_id, 16) % count


def input_digest(values) -> str:
    """A short digest of the values a result was computed from (raw database values).

    Labels count by their ids, labels, boxes and points only: attributes written
    onto them afterwards (a matcher's scores) are not inputs.
    """
    blob = json.dumps(_input_part(values), sort_keys=True, default=str)
    return hashlib.sha1(blob.encode()).hexdigest()[:10]


_LABEL_KEYS = {"_id", "_cls", "label", "bounding_box", "points", "index", "mask_path"}


def _input_part(value):
    if isinstance(value, dict):
        if "_cls" not in value:
            return {k: _input_part(v) for k, v in value.items()}
        return {k: _input_part(v) for k, v in value.items() if k in _LABEL_KEYS or isinstance(v, list)}
    if isinstance(value, (list, tuple)):
        return [_input_part(v) for v in value]
    return value


def list_runs(dataset) -> list[dict]:
    """Returns the run records of a dataset, oldest first (see `fiftyone_blip.runs`)."""
    return runs.list_runs(dataset)


class StoreError(RuntimeError):
    """Results could not be stored (the dataset was deleted during the run)."""


class _Writer:
    """Buffers results and writes them by sample id in chunks of bounded size and age.

    Before each write it checks that the run still holds its claim on every
    field of the set (`run_records.Lease.check`): a run paused past the lease's
    staleness limit, whose fields another run took over, writes nothing more.
    A result replaces the whole set: the set's fields a row leaves out, and
    the `clears` (siblings of an earlier run), are emptied in the same update.

    `done` and `failed` count what the database matched, not what was sent: a
    sample deleted by another process during the run is not counted.
    """

    def __init__(
        self,
        dataset,
        task: Task,
        record: runs.Record,
        lease,
        chunk_size: int,
        chunk_seconds: float,
        clears=(),
        patches_dataset=None,
    ):
        # handles kept aside: a Dataset object deleted in this process refuses every attribute
        self.dataset_name = dataset.name
        self.dataset = dataset
        self.collection = dataset._sample_collection
        self.collection_name = dataset._sample_collection_name
        # a patches view's own collection, which shows the labels' results beside the source's
        self.mirror = patches_dataset
        self.task = task
        self.record = record
        self.lease = lease
        self.chunk_size = chunk_size
        self.chunk_seconds = chunk_seconds
        self.emptied = dict.fromkeys([*task.fields, *clears])
        self.buffer: dict[str, dict] = {}
        self.last_flush = time.monotonic()
        self.done = 0
        self.failed = 0

    def add(self, sample_id: str, values: dict) -> None:
        self.buffer[sample_id] = values
        if len(self.buffer) >= self.chunk_size or time.monotonic() - self.last_flush >= self.chunk_seconds:
            self.flush()

    def flush(self) -> None:
        self.last_flush = time.monotonic()
        if not self.buffer:
            return
        rows, self.buffer = self.buffer, {}
        self.lease.check()  # raises ClaimLost: nothing of `rows` is written
        stored = self._write(rows)
        failed = sum(1 for sid in stored if rows[sid].get(self.task.error_field))
        self.failed += failed
        self.done += len(stored) - failed
        self.record.update(done=self.done, failed=self.failed)
        if len(stored) < len(rows) and not self._dataset_exists():
            raise StoreError(
                f"dataset {self.dataset_name!r} was deleted during the run; "
                f"{self.done} results had been stored in field {self.task.field!r}"
            )

    def _values(self, row: dict) -> dict:
        """A row as one `$set`: a result empties the fields of the set it does not hold."""
        if row.get(self.task.error_field):
            return row  # only the error: an earlier result stays, and `_run` still describes it
        emptied = {name: None for name in self.emptied if name not in row}
        return {**emptied, **{k: _to_bson(v) for k, v in row.items()}}

    def _write(self, rows: dict[str, dict]) -> list[str]:
        """Writes the rows; returns the ids the database matched."""
        import fiftyone.core.sample as fos
        from bson import ObjectId
        from pymongo import UpdateOne

        # One update per sample setting all of its fields at once: MongoDB applies
        # a single-document update atomically, so a crash mid-chunk never leaves a
        # sample with a result but no fingerprint (or the reverse).
        now = datetime.datetime.now(datetime.timezone.utc)
        if self.task.labels is not None:
            return self._write_labels(rows, now)
        ids = [ObjectId(sid) for sid in rows]
        ops = [
            UpdateOne({"_id": oid}, {"$set": {**self._values(row), "last_modified_at": now}})
            for oid, row in zip(ids, rows.values())
        ]
        collection = self.collection
        # `$set` by id is idempotent: an attempt repeated after a timeout changes nothing more
        result = runs.with_retry(lambda: collection.bulk_write(ops, ordered=False))
        if result.matched_count == len(ops):
            stored = list(rows)
        else:
            found = runs.with_retry(lambda: collection.find({"_id": {"$in": ids}}, {"_id": 1}))
            present = {str(doc["_id"]) for doc in found}
            stored = [sid for sid in rows if sid in present]
        if stored:
            # refreshes Sample objects held in memory, as FiftyOne's own bulk writes do
            runs.with_retry(lambda: fos.Sample._reload_docs(self.collection_name, sample_ids=ids))
        return stored

    def _write_labels(self, rows: dict, now) -> list:
        """Writes the rows of labels (keyed by `patches.Place`) onto the source's labels, then onto the
        view's patches; returns the places the source still held."""
        import fiftyone.core.sample as fos

        labels = self.task.labels
        source_ops, mirror_ops = patches.write_ops(labels, rows, self._values, now)
        result = runs.with_retry(lambda: self.collection.bulk_write(source_ops, ordered=False))
        if result.matched_count == len(source_ops):
            stored = list(rows)
        else:
            present = runs.with_retry(lambda: patches.present(self.dataset, labels, list(rows)))
            stored = [place for place in rows if place.label in present]
        if stored:
            sample_ids = list({place.sample for place in stored})
            runs.with_retry(lambda: fos.Sample._reload_docs(self.collection_name, sample_ids=sample_ids))
        kept_places = set(stored)
        kept = [op for place, op in zip(rows, mirror_ops) if place in kept_places]
        if kept and self.mirror is not None:
            mirror = self.mirror._sample_collection
            runs.with_retry(lambda: mirror.bulk_write(kept, ordered=False))
            ids = [place.label for place in stored]
            runs.with_retry(lambda: fos.Sample._reload_docs(self.mirror._sample_collection_name, sample_ids=ids))
        return stored

    def _dataset_exists(self) -> bool:
        import fiftyone as fo

        return runs.with_retry(lambda: fo.dataset_exists(self.dataset_name))


def _to_bson(value):
    """Plain values pass; numpy arrays and scalars become lists and numbers."""
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    return value


def _bad_output(row: dict, field: str) -> str | None:
    """Why a model's row is not a result: an empty main value or a non-finite number; None if fine."""
    main = row.get(field)
    if isinstance(main, str) and not main.strip():
        return "empty output"
    for key, value in row.items():
        if not _finite(value, top=True):
            return f"non-finite output in {key!r}"
    return None


def _finite(value, top: bool = False) -> bool:
    if isinstance(value, (float, np.floating)):
        return math.isfinite(value)
    if isinstance(value, np.ndarray):
        return value.dtype.kind not in "fc" or bool(np.isfinite(value).all())
    if isinstance(value, (list, tuple)):
        return all(_finite(v) for v in value)
    if isinstance(value, dict):
        return all(_finite(v) for v in value.values())
    if isinstance(value, bytes) and top:
        # vectors and arrays arrive serialized (FiftyOne's numpy bytes)
        import fiftyone.core.utils as fou

        try:
            array = fou.deserialize_numpy_array(value)
        except Exception:
            return True
        return _finite(np.asarray(array))
    return True


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def default_workers() -> int:
    """Decode threads: one per core this process may use.

    Measured on 2 cores with BLIP-base on the CPU (BENCHMARKS.md): 2 decode
    threads beside the model's 2 torch threads beat 1 and inline decoding, so
    threads are not held back even when the model runs on the CPU.
    """
    return _cores()


def _step_with_retry(step: Callable[[list], list[dict]], inputs: list) -> list[dict]:
    """Runs a step; on a CUDA out-of-memory error, halves the batch and retries."""
    try:
        return step(inputs)
    except RuntimeError as error:
        if "out of memory" not in str(error).lower() or len(inputs) == 1:
            raise
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        half = len(inputs) // 2
        return _step_with_retry(step, inputs[:half]) + _step_with_retry(step, inputs[half:])


# ---------------------------------------------------------------- checks before any work


REMOTE_PATH = r"^[a-z][a-z0-9+.-]*://|(^|/)(https?|s3|gs|gcs|az|azure|abfss?|minio|ftp):/"


def run_collection(samples):
    """The collection a run goes over: a `group_by` view runs on all of its samples.

    Raises:
        ValueError: a collection whose results could not be written back where
            they belong, with what to run on instead.
    """
    if getattr(samples, "_is_dynamic_groups", False):
        samples = samples.flatten()
    _check_collection(samples)
    return samples


def _check_collection(samples) -> None:
    """Refuses collections whose results could not be written back where they belong."""
    if samples._is_generated and not samples._is_patches:  # patches: results go on the source's labels
        kind = "frames" if samples._is_frames else "clips"
        if samples._is_clips or not samples._is_frames:
            where = "run on the source dataset"
        else:
            where = "clone it into a dataset of images first (view.clone('frames')) and run on that"
        raise ValueError(
            f"{kind} views are not supported: results would stay in the view's temporary collection; {where}"
        )
    media_type = samples.media_type
    if media_type == "video":
        raise ValueError(
            "video samples are not supported: run on a dataset of their frames as images, "
            "e.g. dataset.to_frames(sample_frames=True).clone('frames')"
        )
    if media_type == "group":
        raise ValueError(
            "grouped datasets are not supported: run on one slice, e.g. dataset.select_group_slices('left')"
        )
    # "unknown" stays allowed: image files without an extension are filed under it
    if media_type not in ("image", "unknown", None):
        raise ValueError(f"{media_type} samples are not supported: only images")
    # a URL as stored, or as FiftyOne's path normalization leaves it ("/cwd/https:/host/...")
    remote = {"$match": {"filepath": {"$regex": REMOTE_PATH, "$options": "i"}}}
    found = list(samples._aggregate(pipeline=[remote, {"$limit": 1}, {"$project": {"filepath": 1}}]))
    if found:
        raise ValueError(f"remote media is not supported: download it first (e.g. {found[0]['filepath']!r})")


def _siblings_present(dataset, task: Task) -> list[str]:
    """The task's siblings that an earlier fiftyone-blip run wrote for the same main field."""
    present = []
    for name in task.siblings:
        field = dataset.get_field(task.stored(name)[0])
        info = (field.info or {}) if field is not None else {}
        if info.get("written_by") == "fiftyone-blip" and info.get("field") == task.record_field:
            present.append(name)
    return present


def _declare_fields(dataset, task: Task) -> None:
    """Adds the task's fields and label attributes (every check passed before) and groups them in the App."""
    import fiftyone as fo

    if task.labels is not None:
        fields.declare(dataset, _stored_specs(task), task.capability, flat=True)
        return
    fields.declare(dataset, task.result_fields, task.capability)
    if task.label_attributes:
        fields.declare(dataset, task.label_attributes, task.capability, flat=True)
    # the App's sidebar: results in the capability's group, `_error` / `_run` in a collapsed one
    app_config.group_fields(dataset, task.capability, list(task.fields), (task.error_field, task.run_field))
    for name, spec in task.fields.items():
        if isinstance(spec, tuple) and spec[1].get("embedded_doc_type") is fo.Heatmap and spec[0] is not fo.ListField:
            # readable overlays: coloured through a colorscale, not a faint tint of one colour
            app_config.heatmap_colorscale(dataset, name)


def _stored_specs(task: Task) -> dict:
    """Every stored path of a label task's result set (on each label field) -> its field class."""
    return {path: spec for name, spec in task.result_fields.items() for path in task.stored(name)}


def _declare_mirror(samples, task: Task) -> None:
    """Declares the result set on a patches view's own patches, which show the labels' results."""
    specs = {}
    for field in task.labels.fields:
        root = samples._dataset._get_label_field_root(field)[0]
        specs.update({f"{root}.{name}": spec for name, spec in task.result_fields.items()})
    fields.declare(samples._dataset, specs, task.capability, flat=True)


def field_descriptions(task: Task) -> dict[str, str]:
    """The description of every field a task writes (a generic one where the task gives none), by
    where it is stored (for labels, the attribute of each label field)."""
    described = _descriptions(task)
    return {path: text for name, text in described.items() for path in task.stored(name)}


def _descriptions(task: Task) -> dict[str, str]:
    generic = f"{task.capability} result of fiftyone-blip (see the field's info for the model)"
    return {
        **{name: generic for name in task.fields},
        **task.descriptions,
        task.error_field: f"why fiftyone-blip {task.capability} has no result in {task.field!r} for this sample "
        "(empty: no error)",
        task.run_field: f"fingerprint of the model and settings that produced {task.field!r}: a run with the same "
        "ones skips the sample, another refuses to replace it without overwrite",
    }


def _result_projection(task: Task) -> dict:
    """The result's stamp, and whether the whole set is there (not the values, which may be large)."""
    present = [{"$ne": [{"$ifNull": [f"${name}", None]}, None]} for name in task.done_fields]
    return {task.run_field: 1, "_has": {"$and": present}}


def stored_results(samples, ids: list, task: Task) -> dict:
    """`_result_projection` of the samples `ids` (ObjectIds) as the dataset stores them, by id.

    A view can hide a field or some of its labels (`exclude_fields`, `select_fields`,
    `filter_labels`); the results are written to the dataset all the same, so what
    is already there is read from the dataset, not through the view: one query by
    `_id` for many samples.
    """
    stages = [{"$match": {"_id": {"$in": ids}}}, {"$project": _result_projection(task)}]
    return {doc["_id"]: doc for doc in samples._dataset._sample_collection.aggregate(stages)}


# Sample ids per query when stored values are read by id
_IDS_PER_QUERY = 20_000


def _foreign(task: Task, name: str) -> dict:
    """The query of samples whose `name` holds a value this task would not own: their `{field}_run`
    is not its fingerprint."""
    own = re.compile(f"^{task.fingerprint}(:|$)")
    return {name: {"$ne": None}, task.run_field: {"$not": own}}


def count_foreign_values(samples, task: Task, name: str, snapshot: Snapshot | None = None) -> int:
    """How many samples of `snapshot` (None: the whole dataset, in one query) hold a value in `name`
    that `task` would not own, as the dataset stores them (see `stored_results`); for a task on
    labels, how many labels of the snapshot."""
    if task.labels is not None:
        chunks = [None] if snapshot is None else snapshot.chunks(_IDS_PER_QUERY)
        return patches.count_foreign(samples._root_dataset, task, name, chunks)
    collection = samples._dataset._sample_collection
    if snapshot is None:
        return collection.count_documents(_foreign(task, name))
    chunks = snapshot.chunks(_IDS_PER_QUERY)
    return sum(collection.count_documents({"_id": {"$in": ids}, **_foreign(task, name)}) for ids in chunks)


def foreign_values_message(name: str, count: int, earlier: str = "", unit: str = "samples") -> str:
    """The one refusal of values a run would not own (the SDK, the CLI and the forms say it alike);
    `earlier` says how the run that wrote them differs, where one did; `unit`: samples or labels."""
    return (
        f"field {name!r} already holds values on {count} {unit} that were not written by "
        f"fiftyone-blip with this model and these settings{earlier}; pass overwrite=True "
        f'(CLI --overwrite; in the App, the form\'s "Recompute" checkbox) to replace them, or choose another field'
    )


def _check_no_foreign_values(samples, task: Task, snapshot, clears, whole: bool) -> None:
    """Refuses a result set whose fields hold values fiftyone-blip did not write with this model and these settings.

    `whole`: the snapshot is the whole dataset (counted in one query each, not by ids).
    """
    schema = samples._root_dataset.get_field_schema(flat=task.labels is not None)
    for name in [*task.fields, *clears]:
        stored = [path for path in task.stored(name) if path in schema]
        if not stored and task.labels is None:
            continue  # a label's attribute may be there undeclared (set on a label object): counted all the same
        count = count_foreign_values(samples, task, name, None if whole else snapshot)
        if count:
            unit = "samples" if task.labels is None else "labels"
            shown = name if task.labels is None else " / ".join(task.stored(name))
            raise ValueError(foreign_values_message(shown, count, _earlier_run(samples, task, name), unit))


# identity keys a reader can tell apart (the weights' version is left out, as from the fingerprint)


# What a model's identity may hold besides this run's own keys (an earlier run's adapter, quantization).
_IDENTITY_KEYS = ("model", "path", "revision", "dtype", "language", "quantization")


def _earlier_run(samples, task: Task, name: str) -> str:
    """How the run that wrote a value of others in `name` differs from `task`, as " (...)"; "" when
    no fiftyone-blip record names it (a user's own values). Reads only."""
    dataset = samples._root_dataset
    if task.labels is not None:
        stamp = patches.foreign_stamp(dataset, task, name)
    else:
        doc = dataset._sample_collection.find_one(_foreign(task, name), {task.run_field: 1})
        stamp = (doc or {}).get(task.run_field) or ""
    fingerprint = stamp.split(":")[0]
    if not fingerprint:
        return ""
    entries = [
        entry
        for run in runs._own_runs(dataset)
        for entry in run["config"].get("history", [])
        if entry.get("fingerprint") == fingerprint
    ]
    if not entries:
        return ""
    earlier = entries[-1]
    before, now = dict(earlier.get("settings") or {}), dict(task.settings)
    # the model's identity as the fingerprint holds it (its weights' version is in each stamp instead)
    identity_keys = {*task.identity, *_IDENTITY_KEYS} - {"weights"}
    before.update({k: earlier.get(k) for k in identity_keys if earlier.get(k) is not None})
    now.update({k: task.identity.get(k) for k in identity_keys if task.identity.get(k) is not None})
    changed = sorted(k for k in set(before) | set(now) if before.get(k) != now.get(k))[:5]
    if not changed:  # an older record that did not store what differs
        return f" (they came from {earlier.get('model')!r} with another version of fiftyone-blip)"

    def listed(values):
        return ", ".join(f"{k}={values.get(k)!r}" for k in changed)

    return f" (they came from {earlier.get('model')!r} with {listed(before)}; this run: {listed(now)})"


def preflight(samples, task: Task, options) -> tuple:
    """Every refusal that needs no model, in the order a run meets them; changes nothing.

    Returns:
        (the collection to run on, its snapshot, the siblings to clear).

    Raises:
        ValueError: a collection whose results could not be written back, a
            run key of another run, a field of another type, values a run with
            this model and these settings would not own (without `overwrite`).
    """
    samples = run_collection(samples)
    task = placed(samples, task, options)
    dataset = samples._root_dataset
    runs.check_run_key(dataset, task.capability, task.record_field)
    if task.labels is not None:
        fields.check(dataset, _stored_specs(task), task.capability, flat=True)
        _check_patch_reads(samples, task)
    else:
        fields.check(dataset, task.result_fields, task.capability)
    if task.label_attributes:
        fields.check(dataset, task.label_attributes, task.capability, flat=True)
    snapshot = Snapshot.of(samples, options.shard_spec)
    clears = _siblings_present(dataset, task)
    if not options.overwrite:
        whole = (samples is dataset or patches.of_whole(samples)) and options.shard_spec is None
        _check_no_foreign_values(samples, task, snapshot, clears, whole)
    return samples, snapshot, clears


def placed(samples, task: Task, options) -> Task:
    """The task as it runs on `samples`: on a patches view, writing to its labels (`Task.on_labels`).

    Raises:
        ValueError: a `context` other than 1 on a collection of whole images;
            patches of labels that are not boxes.
    """
    context = getattr(options, "context", 1.0)
    if task.labels is not None:
        return task
    labels = patches.labels_of(samples, context)
    if labels is None:
        if context != 1:
            raise ValueError(
                f"`context` ({context}) grows the boxes of a patches view; run on dataset.to_patches(FIELD) "
                "or leave it at 1"
            )
        return task
    return task.on_labels(labels)


def _check_patch_reads(samples, task: Task) -> None:
    """Refuses a task that reads a sample field a patches view does not hold."""
    for name in task.reads:
        if name != "id" and samples.get_field(name) is None:
            raise ValueError(
                f"{task.capability} reads field {name!r}, which the patches view does not hold "
                "(to_patches keeps only the patches' label field)"
            )


# ---------------------------------------------------------------- what to process

# Samples read per database round trip: memory stays flat whatever the collection's size.
PAGE_SIZE = 2000


class Snapshot:
    """The ids a run goes over, fixed when it starts, in id order (12 bytes a sample).

    A view is evaluated once: `exists(field, False).limit(n)`, `sort_by(...)`
    or `match(F(field) == None)` would give other samples once the run has
    written some results, so the run processes exactly the samples the view
    held at the start (of its shard).
    """

    def __init__(self, samples, shard):
        self.samples = samples
        self.shard = shard

    @classmethod
    def of(cls, samples, shard) -> Snapshot:
        """The snapshot of `samples` (its shard); read on first use, before the run writes anything,
        and not at all by a preflight that counts a whole dataset in one query (a form's check)."""
        return cls(samples, shard)

    @functools.cached_property
    def ids(self) -> np.ndarray:
        cursor = self.samples._aggregate(pipeline=[{"$project": {"_id": 1}}])
        blob = bytearray()
        for doc in cursor:
            if self.shard is None or shard_of(str(doc["_id"]), self.shard[1]) == self.shard[0]:
                blob += doc["_id"].binary
        ids = np.frombuffer(bytes(blob), dtype=np.uint8).reshape(-1, 12)
        return np.unique(ids, axis=0)  # rows sorted: ObjectIds order as their bytes

    def __len__(self) -> int:
        return len(self.ids)

    def chunks(self, size: int):
        """The ids as ObjectIds, `size` at a time."""
        from bson import ObjectId

        for start in range(0, len(self.ids), size):
            yield [ObjectId(raw.tobytes()) for raw in self.ids[start : start + size]]


@dataclasses.dataclass
class _Row:
    id: str
    filepath: str
    reads: tuple
    stamp: str | None
    has_result: bool


def _read_page(samples, task: Task, ids: list) -> list[_Row]:
    """The samples `ids` (ObjectIds, in id order): file path, the task's reads, the stored stamp."""
    if task.labels is not None:
        return _read_label_page(samples, task, ids)
    project = {"filepath": 1, **{name: 1 for name in task.reads if name != "id"}}  # `_id` always comes
    stages = [{"$match": {"_id": {"$in": ids}}}, {"$project": project}]
    dataset = samples._dataset

    def read():
        docs = {}
        if task.reads and samples is not dataset:
            # through the view: it may project the values `prepare` reads (`filter_labels`)
            docs = {doc["_id"]: doc for doc in samples._aggregate(pipeline=stages)}
        missing = [oid for oid in ids if oid not in docs]
        if missing:
            # what the view no longer yields (its result changed as the run wrote) is read as stored
            stored_stages = [{"$match": {"_id": {"$in": missing}}}, {"$project": project}]
            docs.update({doc["_id"]: doc for doc in dataset._sample_collection.aggregate(stored_stages)})
        return docs, stored_results(samples, ids, task)

    docs, stored = runs.with_retry(read)
    return [
        _Row(
            str(oid),
            docs[oid].get("filepath"),
            tuple(_get_path(docs[oid], name) for name in task.reads),
            stored.get(oid, {}).get(task.run_field),
            stored.get(oid, {}).get("_has", False),
        )
        for oid in ids
        if oid in docs  # deleted since the run started
    ]


def _read_label_page(samples, task: Task, ids: list) -> list[_Row]:
    """The patches `ids` (label ObjectIds, in id order): the label's place, the region of the image it
    covers, the task's reads, the stamp its label stores."""
    from fiftyone_blip.images import Region

    labels = task.labels
    extra = {name: 1 for name in task.reads if name != "id"}

    def read():
        docs = patches.read_page(samples, labels, ids, extra)
        missing = [oid for oid in ids if oid not in docs]
        if missing:
            # what the view no longer yields (its result changed as the run wrote) is read from its patches
            docs.update(patches.read_page(samples._dataset, labels, missing, extra))
        return docs, patches.stored_results(samples._root_dataset, task, ids)

    docs, stored = runs.with_retry(read)
    rows = []
    for oid in ids:
        found = patches.place_of(docs[oid], labels) if oid in docs else None
        if found is None:
            continue  # deleted since the run started
        place, box = found
        region = Region(docs[oid].get("filepath"), tuple(box) if box else None, labels.context)
        result = stored.get(oid, {})
        reads = tuple(_get_path(docs[oid], name) for name in task.reads)
        rows.append(_Row(place, region, reads, result.get(task.run_field), result.get("_has", False)))
    return rows


def _get_path(doc: dict, name: str):
    if name == "id":  # FiftyOne's `id` is the document's `_id`
        return str(doc["_id"])
    for part in name.split("."):
        doc = doc.get(part) if isinstance(doc, dict) else None
    return doc


class _Selection:
    """Walks the snapshot page by page; yields (id, stamp, prepare argument) of what needs a result.

    Samples whose stored stamp equals the one a new result would get, and
    whose every required field holds a value, are skipped (counted in `skipped`).
    """

    def __init__(self, samples, task: Task, snapshot: Snapshot, overwrite: bool, on_skip: Callable[[int], None]):
        self.samples = samples
        self.task = task
        self.snapshot = snapshot
        self.overwrite = overwrite
        self.on_skip = on_skip
        self.skipped = 0
        self.selected = 0
        self.converters = [_converter(samples, name) for name in task.reads]

    def __iter__(self):
        task = self.task
        for ids in self.snapshot.chunks(PAGE_SIZE):
            skipped = 0
            for row in _read_page(self.samples, task, ids):
                stamp = task.stamp(row.reads)
                if not self.overwrite and row.has_result and row.stamp == stamp:
                    skipped += 1
                    continue
                self.selected += 1
                values = [convert(value) for convert, value in zip(self.converters, row.reads)]
                yield row.id, stamp, (row.filepath, *values) if task.reads else row.filepath
            self.skipped += skipped
            if skipped:
                self.on_skip(skipped)

    @property
    def total(self) -> int:
        return self.selected + self.skipped


def _converter(samples, name: str) -> Callable:
    """Raw database value -> what `prepare` gets (a Label object for label fields)."""
    field = samples.get_field(name)
    if field is None or not hasattr(field, "to_python"):
        return lambda value: value
    return lambda value: None if value is None else field.to_python(value)


# ---------------------------------------------------------------- decode, step, progress


def decoded_in_order(items: Iterable, prepare: Callable, workers: int, window: int) -> Iterable[tuple]:
    """Yields (id, stamp, input or None, error or None) in order, decoding ahead in threads."""
    from fiftyone_blip.images import ImageDecodeError

    def work(argument):
        try:
            return prepare(argument), None
        except ImageDecodeError as error:
            return None, str(error)
        except Exception as error:  # a bad file must not end the run
            return None, f"{type(error).__name__}: {error}"

    if workers == 0:
        for sample_id, stamp, argument in items:
            yield sample_id, stamp, *work(argument)
        return

    with concurrent.futures.ThreadPoolExecutor(max_workers=workers, thread_name_prefix="blip-decode") as pool:
        pending: collections.deque = collections.deque()
        iterator = iter(items)
        for sample_id, stamp, argument in iterator:
            pending.append((sample_id, stamp, pool.submit(work, argument)))
            if len(pending) >= window:
                break
        while pending:
            sample_id, stamp, future = pending.popleft()
            yield sample_id, stamp, *future.result()
            nxt = next(iterator, None)
            if nxt is not None:
                pending.append((nxt[0], nxt[1], pool.submit(work, nxt[2])))


class _Stepper:
    """Runs the model step on a batch of decoded inputs and hands each sample's row to the writer."""

    def __init__(self, task: Task, writer: _Writer, progress: Progress):
        self.task = task
        self.writer = writer
        self.progress = progress
        self.model_seconds = 0.0

    def __call__(self, batch: list[tuple]) -> None:
        task = self.task
        good = [(sid, x) for sid, _, x, err in batch if err is None]
        results: list[dict] = []
        if good:
            t0 = time.perf_counter()
            results = _step_with_retry(task.step, [x for _, x in good])
            self.model_seconds += time.perf_counter() - t0
        by_id = {sid: values for (sid, _), values in zip(good, results)}
        for sid, stamp, _, err in batch:
            if err is None:
                err = _bad_output(by_id[sid], task.field)
            if err is None:
                row = dict(by_id[sid])
                row[task.error_field] = None
                row[task.run_field] = stamp
            else:
                # Only the error is written: a result from an earlier run stays, and
                # `{field}_run` still describes it.
                row = {task.error_field: err}
            self.writer.add(sid, row)
        self.progress.advance(len(batch))


def _batches(entries: Iterable, batch_size: int) -> Iterable[list]:
    batch: list = []
    for entry in entries:
        batch.append(entry)
        if len(batch) == batch_size:
            yield batch
            batch = []
    if batch:
        yield batch


def _prepare_function(task: Task) -> Callable:
    if task.reads:
        return lambda item: task.prepare(*item)
    return task.prepare


# ---------------------------------------------------------------- the run


def run(samples, task: Task, options=None) -> RunSummary:
    """Runs a task over a sample collection, writing results as it goes.

    The write contract, the same for every capability:

    1. every refusal that needs no model comes first (`preflight`): the
       collection, field names and types, values this run would not own,
       then the claim on every field of the result set; the model loads
       (`Task.bind`) only after them;
    2. a refused run changes nothing: fields, sidebar groups, field
       descriptions and the run record are written only once every check
       (and the model's own, at load) has passed;
    3. the run holds its claim on every field of the set, and checks that it
       still holds it before each write (`run_records.ClaimLost` otherwise);
    4. a sample is done when it holds this run's stamp and every required
       field of the set: only then is it skipped;
    5. a result replaces the whole set (fields the row leaves out, and the
       siblings an earlier run wrote, are emptied);
    6. the run goes over the samples its view held when it started;
    7. nothing it did not write is deleted.

    Args:
        samples: a FiftyOne dataset or view (a `group_by` view runs on its samples).
        task: the capability's `Task`.
        options: a `settings.RunOptions` (batch size, decode workers, shard,
            overwrite, progress, write chunks); None for the defaults.

    Returns:
        a `RunSummary`.

    Raises:
        ValueError: before any work: see `preflight`; another live run
            writing a field of the set (same or overlapping shard).
        run_records.ClaimLost: another run took over the fields while this
            one was paused past the lease's staleness limit; what was written
            before stays.
        run_records.DatabaseUnreachable: MongoDB did not answer for
            `run_records.DB_RETRY_SECONDS`; what was written stays.
        StoreError: the dataset was deleted during the run.
    """
    from fiftyone_blip.settings import RunOptions

    options = options or RunOptions()
    started = time.time()
    dataset = samples._root_dataset
    task = placed(samples, task, options)
    record_id = uuid.uuid4().hex
    lease = runs.Lease(dataset, lease_fields(task), options.shard_spec, record_id)
    # claimed before the checks: two runs sharing any field of their sets cannot both pass them
    lease.take()
    try:
        samples, snapshot, clears = preflight(samples, task, options)
        task = task.bound()
        _declare_fields(dataset, task)
        if task.labels is not None:
            _declare_mirror(samples, task)
        fields.describe(
            dataset,
            field_descriptions(task),
            fields.writer_info(
                task.capability,
                task.record_field,
                task.identity,
                task.fingerprint,
                run_key=runs.run_key(task.capability, task.record_field),
            ),
        )
        return _run_claimed(samples, task, options, snapshot, clears, lease, record_id, started)
    finally:
        lease.release()


def lease_fields(task: Task) -> list[str]:
    """The fields a run claims: its whole result set and the siblings it may clear (for labels, their
    attributes on each label field)."""
    return [path for name in dict.fromkeys([*task.fields, *task.siblings]) for path in task.stored(name)]


def _run_claimed(samples, task: Task, options, snapshot, clears, lease, record_id: str, started: float) -> RunSummary:
    dataset = samples._root_dataset
    total = len(snapshot)
    record = runs.start(samples, task, options.shard_spec, options.batch_size, record_id, total)
    mirror = samples._dataset if task.labels is not None else None
    writer = _Writer(dataset, task, record, lease, options.chunk_size, options.chunk_seconds, clears, mirror)
    progress = Progress(options.progress, total, task.capability)
    selection = _Selection(samples, task, snapshot, options.overwrite, on_skip=progress.advance)
    stepper = _Stepper(task, writer, progress)
    workers = default_workers() if options.num_workers is None else options.num_workers
    status = "failed"
    try:
        window = max(2 * options.batch_size, 4 * workers)
        decoded = decoded_in_order(selection, _prepare_function(task), workers, window)
        for batch in _batches(decoded, options.batch_size):
            stepper(batch)
        status = "completed"
    except KeyboardInterrupt:
        status = "interrupted"
        raise
    except runs.ClaimLost:
        status = "claim lost"
        raise
    finally:
        # Whatever happened, what was computed is written before the error propagates
        # (unless the claim is gone: then nothing more is written).
        try:
            if status != "claim lost":
                writer.flush()
        except runs.ClaimLost:
            status = "claim lost"
            raise
        except BaseException:
            status = "failed" if status == "completed" else status
            raise
        finally:
            progress.close()
            record.update(
                status=status,
                ended=runs.now(),
                total=selection.total,
                skipped=selection.skipped,
                done=writer.done,
                failed=writer.failed,
            )
            runs.refresh(dataset)
    return RunSummary(
        run_id=record_id,
        field=task.field if task.labels is None else task.stored(task.field)[0],
        total=selection.total,
        done=writer.done,
        failed=writer.failed,
        skipped=selection.skipped,
        seconds=time.time() - started,
        model_seconds=stepper.model_seconds,
    )


def to_batch(inputs: list, device: str):
    """Stacks per-sample arrays into one tensor on a device."""
    import torch

    return torch.from_numpy(np.stack(inputs)).to(device)
