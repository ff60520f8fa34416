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
- every run leaves a record (see `list_runs`).
"""

from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import datetime
import hashlib
import json
import os
import platform
import time
import uuid
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np

from fiftyone_blip.fields import check_field_name
from fiftyone_blip.progress import progress_bar as _progress_bar

RUNS_COLLECTION = "fiftyone_blip_runs"
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
    """

    capability: str
    field: str
    fields: dict[str, type]
    settings: dict
    identity: dict
    prepare: Callable[[str], Any]
    step: Callable[[list], list[dict]]
    reads: tuple[str, ...] = ()

    @property
    def error_field(self) -> str:
        return f"{self.field}_error"

    @property
    def run_field(self) -> str:
        return f"{self.field}_run"

    @property
    def fingerprint(self) -> str:
        blob = json.dumps({"identity": self.identity, "settings": self.settings}, sort_keys=True, default=str)
        return hashlib.sha1(blob.encode()).hexdigest()[:12]


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


def _runs_collection():
    import fiftyone.core.odm as foo

    return foo.get_db_conn()[RUNS_COLLECTION]


def _versions() -> dict:
    from importlib import metadata

    versions = {"python": platform.python_version()}
    for package in ("fiftyone-blip", "fiftyone", "torch", "transformers", "peft"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            pass
    return versions


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _mark_interrupted(dataset_id: str) -> None:
    """Records of runs on this host whose process is gone become "interrupted"."""
    runs = _runs_collection()
    for record in runs.find({"dataset_id": dataset_id, "status": "running", "host": platform.node()}):
        if record.get("pid") and not _pid_alive(record["pid"]):
            runs.update_one({"run_id": record["run_id"]}, {"$set": {"status": "interrupted"}})


def list_runs(dataset) -> list[dict]:
    """Returns the run records of a dataset, oldest first."""
    _mark_interrupted(str(dataset._doc.id))
    cursor = _runs_collection().find({"dataset_id": str(dataset._doc.id)}, {"_id": 0}).sort("started", 1)
    return list(cursor)


class _Writer:
    """Buffers results and writes them by sample id in chunks of bounded size and age."""

    def __init__(self, dataset, task: Task, record_id: str, chunk_size: int, chunk_seconds: float):
        self.dataset = dataset
        self.task = task
        self.record_id = record_id
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
        if self.buffer:
            from bson import ObjectId
            from pymongo import UpdateOne

            # One update per sample setting all of its fields at once: MongoDB applies
            # a single-document update atomically, so a crash mid-chunk never leaves a
            # sample with a result but no fingerprint (or the reverse).
            now = datetime.datetime.now(datetime.timezone.utc)
            ids = [ObjectId(sid) for sid in self.buffer]
            ops = [
                UpdateOne({"_id": oid}, {"$set": {**{k: _to_bson(v) for k, v in row.items()}, "last_modified_at": now}})
                for oid, row in zip(ids, self.buffer.values())
            ]
            # FiftyOne's own bulk-write primitive: it also refreshes Sample objects in memory.
            self.dataset._bulk_write(ops, ids=ids)
            failed = sum(1 for row in self.buffer.values() if row.get(self.task.error_field))
            self.failed += failed
            self.done += len(self.buffer) - failed
            self.buffer.clear()
            _runs_collection().update_one(
                {"run_id": self.record_id}, {"$set": {"done": self.done, "failed": self.failed}}
            )
        self.last_flush = time.monotonic()


def _to_bson(value):
    """Plain values pass; numpy arrays and scalars become lists and numbers."""
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    return value


def default_workers() -> int:
    """Decode threads: one per core, at most 8.

    Measured on 2 cores with BLIP-base on the CPU (BENCHMARKS.md): 2 decode
    threads beside the model's 2 torch threads beat 1 and inline decoding, so
    threads are not held back even when the model runs on the CPU.
    """
    return min(8, os.cpu_count() or 1)


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


def _declare_fields(dataset, task: Task) -> None:
    """Adds the task's fields; refuses to write into an existing field of another type."""
    import fiftyone as fo

    schema = dataset.get_field_schema()
    wanted = dict(task.fields)
    wanted[task.error_field] = fo.StringField
    wanted[task.run_field] = fo.StringField
    for name, field_type in wanted.items():
        if name not in schema:
            continue
        existing = schema[name]
        if not isinstance(existing, field_type):
            raise ValueError(
                f"field {name!r} already exists as a {type(existing).__name__}; "
                f"{task.capability} writes a {field_type.__name__}: choose another field"
            )
    for name, field_type in wanted.items():
        if name not in schema:
            dataset.add_sample_field(name, field_type)


def _decoded_in_order(
    items: list[tuple[str, str]], prepare: Callable, workers: int, window: int
) -> Iterable[tuple[str, Any, str | None]]:
    """Yields (id, input or None, error or None) in order, decoding ahead in threads."""
    from fiftyone_blip.images import ImageDecodeError

    def work(path):
        try:
            return prepare(path), None
        except ImageDecodeError as error:
            return None, str(error)
        except Exception as error:  # a bad file must not end the run
            return None, f"{type(error).__name__}: {error}"

    if workers == 0:
        for sample_id, path in items:
            result, error = work(path)
            yield sample_id, result, error
        return

    with concurrent.futures.ThreadPoolExecutor(max_workers=workers, thread_name_prefix="blip-decode") as pool:
        pending: collections.deque = collections.deque()
        iterator = iter(items)
        for sample_id, path in iterator:
            pending.append((sample_id, pool.submit(work, path)))
            if len(pending) >= window:
                break
        while pending:
            sample_id, future = pending.popleft()
            result, error = future.result()
            yield sample_id, result, error
            nxt = next(iterator, None)
            if nxt is not None:
                pending.append((nxt[0], pool.submit(work, nxt[1])))


def run(samples, task: Task, options=None) -> RunSummary:
    """Runs a task over a sample collection, writing results as it goes.

    Args:
        samples: a FiftyOne dataset or view.
        task: the capability's `Task`.
        options: a `settings.RunOptions` (batch size, decode workers, shard,
            overwrite, progress, write chunks); None for the defaults.

    Returns:
        a `RunSummary`.
    """
    from fiftyone_blip.settings import RunOptions

    options = options or RunOptions()
    batch_size = options.batch_size
    shard_spec = options.shard_spec
    overwrite = options.overwrite
    progress = options.progress
    chunk_size, chunk_seconds = options.chunk_size, options.chunk_seconds
    workers = default_workers() if options.num_workers is None else options.num_workers
    dataset = samples._dataset
    started = time.time()

    _declare_fields(dataset, task)
    fingerprint = task.fingerprint
    ids, paths, *read_values = samples.values(["id", "filepath", *task.reads])
    prepare = task.prepare
    if task.reads:
        # each item carries its sample's values; prepare gets them after the path
        paths = list(zip(paths, *read_values))
        prepare = lambda item: task.prepare(*item)  # noqa: E731
    done_ids: set[str] = set()
    if not overwrite:
        from fiftyone import ViewField as F

        done_view = samples.match((F(task.run_field) == fingerprint) & (F(task.field) != None))  # noqa: E711
        done_ids = set(done_view.values("id"))
    items = []
    skipped = 0
    for sample_id, path in zip(ids, paths):
        if shard_spec and shard_of(sample_id, shard_spec[1]) != shard_spec[0]:
            continue
        if sample_id in done_ids:
            skipped += 1
            continue
        items.append((sample_id, path))
    total = len(items) + skipped
    del ids, paths, done_ids

    record_id = uuid.uuid4().hex
    _runs_collection().insert_one(
        {
            "run_id": record_id,
            "dataset_id": str(dataset._doc.id),
            "dataset": dataset.name,
            "capability": task.capability,
            "field": task.field,
            "fingerprint": fingerprint,
            **task.identity,
            "settings": task.settings,
            "shard": f"{shard_spec[0]}/{shard_spec[1]}" if shard_spec else None,
            "batch_size": batch_size,
            "versions": _versions(),
            "host": platform.node(),
            "pid": os.getpid(),
            "started": datetime.datetime.now(datetime.timezone.utc),
            "ended": None,
            "status": "running",
            "total": total,
            "done": 0,
            "failed": 0,
            "skipped": skipped,
        }
    )

    writer = _Writer(dataset, task, record_id, chunk_size, chunk_seconds)
    bar = _progress_bar(total, task.capability) if progress is True else None
    report = progress if callable(progress) else None
    if bar is not None:
        bar.update(skipped)
    model_seconds = 0.0
    processed = skipped
    status = "failed"

    def emit(batch: list[tuple[str, Any, str | None]]) -> None:
        nonlocal model_seconds, processed
        good = [(sid, x) for sid, x, err in batch if err is None]
        results: list[dict] = []
        if good:
            t0 = time.perf_counter()
            results = _step_with_retry(task.step, [x for _, x in good])
            model_seconds += time.perf_counter() - t0
        by_id = {sid: values for (sid, _), values in zip(good, results)}
        for sid, _, err in batch:
            if err is None:
                row = dict(by_id[sid])
                row[task.error_field] = None
                row[task.run_field] = fingerprint
            else:
                # Only the error is written: a result from an earlier run stays, and
                # `{field}_run` still describes it.
                row = {task.error_field: err}
            writer.add(sid, row)
        processed += len(batch)
        if bar is not None:
            bar.update(len(batch))
        if report is not None:
            report(processed, total)

    try:
        batch: list = []
        window = max(2 * batch_size, 4 * workers)
        for entry in _decoded_in_order(items, prepare, workers, window):
            batch.append(entry)
            if len(batch) == batch_size:
                emit(batch)
                batch = []
        if batch:
            emit(batch)
        status = "completed"
    finally:
        # Whatever happened, what was computed is written before the error propagates.
        writer.flush()
        if bar is not None:
            bar.close()
        _runs_collection().update_one(
            {"run_id": record_id},
            {"$set": {"status": status, "ended": datetime.datetime.now(datetime.timezone.utc)}},
        )
    return RunSummary(
        run_id=record_id,
        field=task.field,
        total=total,
        done=writer.done,
        failed=writer.failed,
        skipped=skipped,
        seconds=time.time() - started,
        model_seconds=model_seconds,
    )


def to_batch(inputs: list, device: str):
    """Stacks per-sample arrays into one tensor on a device."""
    import torch

    return torch.from_numpy(np.stack(inputs)).to(device)
