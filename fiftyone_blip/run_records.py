"""Run records: one document per engine run in the `fiftyone_blip_runs` collection.

A record says which dataset, field, model and settings a run used, where it
ran (host, pid, versions), how far it got (total, done, failed, skipped) and
how it ended ("running", "completed", "failed", "interrupted").
"""

from __future__ import annotations

import datetime
import os
import platform
import threading
import time

RUNS_COLLECTION = "fiftyone_blip_runs"


def collection():
    import fiftyone.core.odm as foo

    return foo.get_db_conn()[RUNS_COLLECTION]


def now() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc)


def versions() -> dict:
    from importlib import metadata

    found = {"python": platform.python_version()}
    for package in ("fiftyone-blip", "fiftyone", "torch", "transformers", "peft"):
        try:
            found[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            pass
    return found


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def mark_interrupted(dataset_id: str) -> None:
    """Records of runs on this host whose process is gone become "interrupted"."""
    records = collection()
    for record in records.find({"dataset_id": dataset_id, "status": "running", "host": platform.node()}):
        if record.get("pid") and not pid_alive(record["pid"]):
            records.update_one({"run_id": record["run_id"]}, {"$set": {"status": "interrupted"}})


def list_runs(dataset) -> list[dict]:
    """Returns the run records of a dataset, oldest first."""
    mark_interrupted(str(dataset._doc.id))
    # lease documents (see `Lease`) share the collection; they have no run_id
    cursor = collection().find({"dataset_id": str(dataset._doc.id), "run_id": {"$exists": True}}, {"_id": 0})
    return list(cursor.sort("started", 1))


def new_record(dataset, task, fingerprint: str, shard, batch_size: int, run_id: str) -> dict:
    """The record a run starts with (status "running", no counts yet)."""
    return {
        "run_id": run_id,
        "dataset_id": str(dataset._doc.id),
        "dataset": dataset.name,
        "capability": task.capability,
        "field": task.field,
        "fingerprint": fingerprint,
        **task.identity,
        "settings": task.settings,
        "shard": f"{shard[0]}/{shard[1]}" if shard else None,
        "batch_size": batch_size,
        "versions": versions(),
        "host": platform.node(),
        "pid": os.getpid(),
        "started": now(),
        "ended": None,
        "status": "running",
        "total": 0,
        "done": 0,
        "failed": 0,
        "skipped": 0,
    }


# ---------------------------------------------------------------- database stalls

# How long a write may keep failing before a run stops (seconds); the
# environment variable lets a deployment with slow fail-overs raise it.
DB_RETRY_SECONDS = float(os.environ.get("FIFTYONE_BLIP_DB_RETRY_SECONDS", "120"))
# Longest wait for one attempt: a stopped server otherwise blocks a socket forever.
DB_ATTEMPT_SECONDS = 10.0


class DatabaseUnreachable(RuntimeError):
    """MongoDB did not answer within `DB_RETRY_SECONDS`."""


def _transient(error: Exception) -> bool:
    from pymongo.errors import ConnectionFailure, PyMongoError

    return isinstance(error, ConnectionFailure) or (isinstance(error, PyMongoError) and error.timeout)


def with_retry(operation, limit: float | None = None):
    """Runs a database operation, retrying with back-off while the server does not answer.

    The operations passed here are idempotent (`$set` by id, record updates), so an
    attempt that timed out after the server applied it is safe to repeat.

    Raises:
        DatabaseUnreachable: still no answer after `limit` seconds (`DB_RETRY_SECONDS`).
    """
    import pymongo

    limit = DB_RETRY_SECONDS if limit is None else limit
    deadline = time.monotonic() + limit
    delay = 0.25
    while True:
        remaining = deadline - time.monotonic()
        try:
            with pymongo.timeout(max(0.5, min(DB_ATTEMPT_SECONDS, remaining))):
                return operation()
        except Exception as error:
            if not _transient(error):
                raise
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise DatabaseUnreachable(f"database unreachable for {limit:.0f} s; re-run to resume") from None
            time.sleep(min(delay, remaining))
            delay = min(2 * delay, 5.0)


def update(run_id: str, values: dict) -> None:
    with_retry(lambda: collection().update_one({"run_id": run_id}, {"$set": values}))


# ---------------------------------------------------------------- leases: one writer per field and shard

# A holder whose heartbeat is older than this is presumed gone (seconds).
LEASE_STALE_SECONDS = 120.0
HEARTBEAT_SECONDS = 10.0


def lease_key(dataset_id: str, field: str) -> str:
    return f"lease:{dataset_id}:{field}"


def _overlap(a, b) -> bool:
    """Shards overlap unless both split the same way into different parts."""
    if a is None or b is None:
        return True
    return a[1] != b[1] or a[0] == b[0]


def _holder_alive(holder: dict) -> bool:
    if holder.get("host") == platform.node() and holder.get("pid") and not pid_alive(holder["pid"]):
        return False
    beat = holder.get("heartbeat")
    if beat is None:
        return False
    if beat.tzinfo is None:
        beat = beat.replace(tzinfo=datetime.timezone.utc)
    return (now() - beat).total_seconds() < LEASE_STALE_SECONDS


class Lease:
    """A claim on (dataset, field, shard), taken atomically, kept alive by a heartbeat thread."""

    def __init__(self, dataset, field: str, shard, run_id: str):
        self.key = lease_key(str(dataset._doc.id), field)
        self.dataset_name = dataset.name
        self.field = field
        self.shard = list(shard) if shard else None
        self.run_id = run_id
        self._stop = threading.Event()
        self._thread = None

    def take(self) -> None:
        """Claims the field; a ValueError names the live run that holds an overlapping claim."""
        from pymongo.errors import DuplicateKeyError

        me = {"run_id": self.run_id, "shard": self.shard, "host": platform.node(), "pid": os.getpid()}
        records = collection()
        for _ in range(100):
            doc = with_retry(lambda: records.find_one({"_id": self.key}))
            me["heartbeat"] = now()
            if doc is None:
                try:
                    with_retry(lambda: records.insert_one({"_id": self.key, "holders": [me], "version": 0}))
                    break
                except DuplicateKeyError:
                    continue
            live = [h for h in doc.get("holders", []) if _holder_alive(h)]
            for holder in live:
                if _overlap(holder.get("shard"), self.shard):
                    raise ValueError(self._busy(holder))
            # compare-and-set on the version: two runs taking the field at once cannot both win
            claim = {"_id": self.key, "version": doc.get("version", 0)}
            change = {"$set": {"holders": [*live, dict(me)]}, "$inc": {"version": 1}}
            result = with_retry(lambda claim=claim, change=change: records.update_one(claim, change))
            if result.matched_count:
                break
        else:
            raise RuntimeError(f"could not claim field {self.field!r}: too many concurrent claims")
        self._thread = threading.Thread(target=self._beat, name="blip-lease", daemon=True)
        self._thread.start()

    def _busy(self, holder: dict) -> str:
        record = collection().find_one({"run_id": holder["run_id"]}, {"started": 1}) or {}
        shard = f", shard {holder['shard'][0]}/{holder['shard'][1]}" if holder.get("shard") else ""
        since = f", since {record['started']:%Y-%m-%d %H:%M:%S} UTC" if record.get("started") else ""
        return (
            f"field {self.field!r} of dataset {self.dataset_name!r} is being written by run {holder['run_id']} "
            f"(pid {holder.get('pid')} on {holder.get('host')}{shard}{since}): wait for it to end, "
            f"or give each worker its own shard"
        )

    def _beat(self) -> None:
        import pymongo

        while not self._stop.wait(HEARTBEAT_SECONDS):
            try:
                with pymongo.timeout(DB_ATTEMPT_SECONDS):
                    collection().update_one(
                        {"_id": self.key, "holders.run_id": self.run_id},
                        {"$set": {"holders.$.heartbeat": now()}, "$inc": {"version": 1}},
                    )
            except Exception:  # a missed beat is retried at the next one
                pass

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=DB_ATTEMPT_SECONDS + 1)
        try:
            with_retry(
                lambda: collection().update_one(
                    {"_id": self.key}, {"$pull": {"holders": {"run_id": self.run_id}}, "$inc": {"version": 1}}
                )
            )
        except DatabaseUnreachable:
            pass  # the claim lapses by itself: its process ends and its heartbeat stops
