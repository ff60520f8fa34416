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
import hashlib
import itertools
import json
import math
import os
import re
import time
import uuid
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np

from fiftyone_blip import app_config, fields
from fiftyone_blip import run_records as runs
from fiftyone_blip.fields import check_field_name
from fiftyone_blip.progress import Progress

MAX_BATCH_SIZE = 1024


@dataclasses.dataclass
class Task:
    """What a capability gives the engine.

    Attributes:
        capability: a short name ("caption").
        field: the main result field; a sample counts as done when it is set.
        fields: every field the task writes, name -> FiftyOne field class.
        settings: the settings that change results (they go in the fingerprint).
        identity: which weights produce results (model, path, revision, dtype).
        prepare: file path -> model input (runs in decode threads; raises
            `images.ImageDecodeError` for a bad file).
        step: list of inputs -> list of {field: value} (runs on the model).
        reads: sample fields `prepare` needs beside the file path (e.g. the
            caption a heatmap explains); with any, `prepare(path, *values)`.
        descriptions: what each written field holds, name (a dotted path for
            label attributes) -> one sentence: the fields' FiftyOne
            `description`; the engine describes `{field}_error` and `{field}_run`.
    """

    capability: str
    field: str
    fields: dict[str, type]
    settings: dict
    identity: dict
    prepare: Callable[[str], Any]
    step: Callable[[list], list[dict]]
    reads: tuple[str, ...] = ()
    descriptions: dict[str, str] = dataclasses.field(default_factory=dict)

    @property
    def error_field(self) -> str:
        return f"{self.field}_error"

    @property
    def run_field(self) -> str:
        return f"{self.field}_run"

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


def parse_shard(shard: str | tuple[int, int] | None) -> tuple[int, int] | None:
    """Parses a shard spec "I/N" into (I, N), checking 0 <= I < N."""
    if shard is None or shard == "":
        return None
    if isinstance(shard, str):
        try:
            index, count = (int(part) for part in shard.split("/"))
        except ValueError:
            raise ValueError(f"`shard` must look like 'I/N' (e.g. '0/4'), got {shard!r}") from None
    else:
        index, count = shard
    if count < 1 or not 0 <= index < count:
        raise ValueError(f"`shard` must be I/N with 0 <= I < N, got {index}/{count}")
    return index, count


def shard_of(sample_id: str, count: int) -> int:
    """The shard a sample belongs to: a pure function of its id, so workers agree."""
    return int(sample_id, 16) % count


def check_batch_size(batch_size: int) -> int:
    if not isinstance(batch_size, int) or not 1 <= batch_size <= MAX_BATCH_SIZE:
        raise ValueError(f"`batch_size` must be in 1..{MAX_BATCH_SIZE}, got {batch_size!r}")
    return batch_size


def check_run_options(field: str, batch_size: int, shard) -> None:
    """The checks every capability runs before touching a sample."""
    check_field_name(field)
    check_batch_size(batch_size)
    parse_shard(shard)


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

    `done` and `failed` count what the database matched, not what was sent: a
    sample deleted by another process during the run is not counted.
    """

    def __init__(self, dataset, task: Task, record: runs.Record, chunk_size: int, chunk_seconds: float):
        # handles kept aside: a Dataset object deleted in this process refuses every attribute
        self.dataset_name = dataset.name
        self.collection = dataset._sample_collection
        self.collection_name = dataset._sample_collection_name
        self.task = task
        self.record = record
        self.chunk_size = chunk_size
        self.chunk_seconds = chunk_seconds
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

    def _write(self, rows: dict[str, dict]) -> list[str]:
        """Writes the rows; returns the ids the database matched."""
        import fiftyone.core.sample as fos
        from bson import ObjectId
        from pymongo import UpdateOne

        # One update per sample setting all of its fields at once: MongoDB applies
        # a single-document update atomically, so a crash mid-chunk never leaves a
        # sample with a result but no fingerprint (or the reverse).
        now = datetime.datetime.now(datetime.timezone.utc)
        ids = [ObjectId(sid) for sid in rows]
        ops = [
            UpdateOne({"_id": oid}, {"$set": {**{k: _to_bson(v) for k, v in row.items()}, "last_modified_at": now}})
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


def _check_collection(samples) -> None:
    """Refuses collections whose results could not be written back where they belong."""
    if samples._is_generated:
        kind = "patches" if samples._is_patches else "frames" if samples._is_frames else "clips"
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


def _declare_fields(dataset, task: Task) -> None:
    """Adds the task's fields; refuses to write into an existing field of another type."""
    import fiftyone as fo

    wanted = {**task.fields, task.error_field: fo.StringField, task.run_field: fo.StringField}
    fields.declare(dataset, wanted, task.capability)
    # the App's sidebar: results in the capability's group, `_error` / `_run` in a collapsed one
    app_config.group_fields(dataset, task.capability, list(task.fields), (task.error_field, task.run_field))


def field_descriptions(task: Task) -> dict[str, str]:
    """The description of every field a task writes (a generic one where the task gives none)."""
    generic = f"{task.capability} result of fiftyone-blip (see the field's info for the model)"
    return {
        **{name: generic for name in task.fields},
        task.field: generic,
        **task.descriptions,
        task.error_field: f"why fiftyone-blip {task.capability} has no result in {task.field!r} for this sample "
        "(None: no error)",
        task.run_field: f"fingerprint of the model and settings that produced {task.field!r}: a run with the same "
        "ones skips the sample, another refuses to replace it without overwrite",
    }


def _result_projection(task: Task) -> dict:
    """The result's stamp, and whether a result is there (not the result itself, which may be large)."""
    return {task.run_field: 1, "_has": {"$ne": [{"$ifNull": [f"${task.field}", None]}, None]}}


def stored_results(samples, ids: list, task: Task) -> dict:
    """`_result_projection` of the samples `ids` (ObjectIds) as the dataset stores them, by id.

    A view can hide a field or some of its labels (`exclude_fields`, `select_fields`,
    `filter_labels`); the results are written to the dataset all the same, so what
    is already there is read from the dataset, not through the view: one query by
    `_id` for many samples (a `$lookup` per sample in the view's pipeline cost
    about 0.13 ms a sample).
    """
    stages = [{"$match": {"_id": {"$in": ids}}}, {"$project": _result_projection(task)}]
    return {doc["_id"]: doc for doc in samples._dataset._sample_collection.aggregate(stages)}


# Sample ids per query when a view's stored values are read
_IDS_PER_QUERY = 20_000


def count_foreign_values(samples, field: str, task: Task) -> int:
    """How many samples hold a value in `field` (as the dataset stores it, see `stored_results`) whose
    `{task.field}_run` is not this task's fingerprint."""
    own = re.compile(f"^{task.fingerprint}(:|$)")
    foreign = {field: {"$ne": None}, task.run_field: {"$not": own}}
    if samples is samples._dataset:  # a whole dataset hides nothing
        counted = list(samples._aggregate(pipeline=[{"$match": foreign}, {"$count": "n"}]))
        return counted[0]["n"] if counted else 0
    # the view's ids in chunks, as its cursor yields them: a view of millions is never held whole
    cursor = samples._aggregate(pipeline=[{"$project": {"_id": 1}}])
    collection = samples._dataset._sample_collection
    count = 0
    while ids := [doc["_id"] for doc in itertools.islice(cursor, _IDS_PER_QUERY)]:
        count += collection.count_documents({"_id": {"$in": ids}, **foreign})
    return count


def _check_no_foreign_values(samples, task: Task) -> None:
    """Refuses a field that holds values fiftyone-blip did not write with these model and settings."""
    if task.field not in samples._dataset.get_field_schema():
        return
    count = count_foreign_values(samples, task.field, task)
    if count:
        raise ValueError(
            f"field {task.field!r} already holds values on {count} samples that were not written by "
            f"fiftyone-blip with this model and these settings; pass overwrite=True "
            f'(CLI --overwrite; in the App, the form\'s "Recompute" checkbox) to replace them, or choose another field'
        )


# ---------------------------------------------------------------- what to process

# Samples read per database round trip: memory stays flat whatever the collection's size.
PAGE_SIZE = 2000


@dataclasses.dataclass
class _Row:
    id: str
    filepath: str
    reads: tuple
    stamp: str | None
    has_result: bool


def _read_page(samples, task: Task, after: str | None, size: int) -> list[_Row]:
    """The next `size` samples of the collection after id `after`, in id order."""
    from bson import ObjectId

    project = {"filepath": 1, **_result_projection(task)}
    project.update({name: 1 for name in task.reads if name != "id"})  # `_id` always comes
    stages = [{"$match": {"_id": {"$gt": ObjectId(after)}}}] if after else []
    stages += [{"$sort": {"_id": 1}}, {"$limit": size}, {"$project": project}]

    def read():
        docs = list(samples._aggregate(pipeline=stages))
        if samples is samples._dataset:  # a whole dataset hides nothing
            return docs, {doc["_id"]: doc for doc in docs}
        # the result and its stamp as stored: the view may hide them (see `stored_results`)
        return docs, stored_results(samples, [doc["_id"] for doc in docs], task)

    docs, stored = runs.with_retry(read)
    return [
        _Row(
            str(doc["_id"]),
            doc.get("filepath"),
            tuple(_get_path(doc, name) for name in task.reads),
            stored.get(doc["_id"], {}).get(task.run_field),
            stored.get(doc["_id"], {}).get("_has", False),
        )
        for doc in docs
    ]


def _get_path(doc: dict, name: str):
    if name == "id":  # FiftyOne's `id` is the document's `_id`
        return str(doc["_id"])
    for part in name.split("."):
        doc = doc.get(part) if isinstance(doc, dict) else None
    return doc


class _Selection:
    """Walks the collection page by page; yields (id, stamp, prepare argument) of what needs a result.

    Samples of other shards are passed over; samples whose stored stamp equals
    the one a new result would get are skipped (counted in `skipped`).
    """

    def __init__(self, samples, task: Task, shard, overwrite: bool, on_skip: Callable[[int], None]):
        self.samples = samples
        self.task = task
        self.shard = shard
        self.overwrite = overwrite
        self.on_skip = on_skip
        self.skipped = 0
        self.selected = 0
        self.converters = [_converter(samples, name) for name in task.reads]

    def __iter__(self):
        task, after = self.task, None
        while True:
            page = _read_page(self.samples, task, after, PAGE_SIZE)
            if not page:
                return
            after = page[-1].id
            skipped = 0
            for row in page:
                if self.shard and shard_of(row.id, self.shard[1]) != self.shard[0]:
                    continue
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
            if len(page) < PAGE_SIZE:
                return

    @property
    def total(self) -> int:
        return self.selected + self.skipped


def _converter(samples, name: str) -> Callable:
    """Raw database value -> what `prepare` gets (a Label object for label fields)."""
    field = samples.get_field(name)
    if field is None or not hasattr(field, "to_python"):
        return lambda value: value
    return lambda value: None if value is None else field.to_python(value)


def _count_in_scope(samples, shard) -> int:
    """How many samples of the collection fall in the shard (streams ids; holds none)."""
    if not shard:
        return samples.count()
    cursor = samples._aggregate(pipeline=[{"$project": {"_id": 1}}])
    return sum(1 for doc in cursor if shard_of(str(doc["_id"]), shard[1]) == shard[0])


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


def _check(samples, task: Task, options) -> None:
    """Everything refused before any work: the collection, field types, values of others, a run key of others."""
    _check_collection(samples)
    runs.check_run_key(samples._dataset, task.capability, task.field)
    _declare_fields(samples._dataset, task)
    if not options.overwrite:
        _check_no_foreign_values(samples, task)


def run(samples, task: Task, options=None) -> RunSummary:
    """Runs a task over a sample collection, writing results as it goes.

    The steps: check (collection, fields, values written by others), claim the
    field, record the run, select page by page what needs a result, decode
    ahead in threads, step the model per batch, write in chunks, record how
    the run ended ("completed", "failed" or "interrupted").

    Args:
        samples: a FiftyOne dataset or view.
        task: the capability's `Task`.
        options: a `settings.RunOptions` (batch size, decode workers, shard,
            overwrite, progress, write chunks); None for the defaults.

    Returns:
        a `RunSummary`.

    Raises:
        ValueError: before any work: a view whose results could not be written
            back, a field of another type, values in the field that this model
            and these settings did not write (without `overwrite`), or another
            run writing the same field and shard.
        run_records.DatabaseUnreachable: MongoDB did not answer for
            `run_records.DB_RETRY_SECONDS`; what was written stays.
        StoreError: the dataset was deleted during the run.
    """
    from fiftyone_blip.settings import RunOptions

    options = options or RunOptions()
    started = time.time()
    dataset, shard = samples._dataset, options.shard_spec
    _check(samples, task, options)
    record_id = uuid.uuid4().hex
    lease = runs.Lease(dataset, task.field, shard, record_id)
    lease.take()
    try:
        # after every refusal: a refused run leaves the fields' info naming the run that wrote them
        fields.describe(
            dataset,
            field_descriptions(task),
            fields.writer_info(
                task.capability,
                task.field,
                task.identity,
                task.fingerprint,
                run_key=runs.run_key(task.capability, task.field),
            ),
        )
        return _run_claimed(samples, task, options, record_id, started)
    finally:
        lease.release()


def _run_claimed(samples, task: Task, options, record_id: str, started: float) -> RunSummary:
    dataset, shard = samples._dataset, options.shard_spec
    total = _count_in_scope(samples, shard)
    record = runs.start(dataset, task, shard, options.batch_size, record_id, total)
    writer = _Writer(dataset, task, record, options.chunk_size, options.chunk_seconds)
    progress = Progress(options.progress, total, task.capability)
    selection = _Selection(samples, task, shard, options.overwrite, on_skip=progress.advance)
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
    finally:
        # Whatever happened, what was computed is written before the error propagates.
        try:
            writer.flush()
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
        field=task.field,
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
