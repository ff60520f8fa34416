"""Run records: one document per engine run in the `fiftyone_blip_runs` collection.

A record says which dataset, field, model and settings a run used, where it
ran (host, pid, versions), how far it got (total, done, failed, skipped) and
how it ended ("running", "completed", "failed", "interrupted").
"""

from __future__ import annotations

import datetime
import os
import platform

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
