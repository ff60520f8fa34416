"""Run records in FiftyOne's run framework, the per-field lease, and database retries.

Each (capability, field) pair is one FiftyOne run on its dataset, under the
key `blip_{capability}_{field}` (e.g. `blip_caption_caption_de`), so
`dataset.list_runs()`, `get_run_info(key)` and the App's runs panel show it, and
FiftyOne carries it: `clone()` copies it, a rename keeps it, a FiftyOneDataset
export takes it along, `delete()` removes it. The run's config holds its
history: one entry per engine run that wrote the field, with which model and
settings, where it ran (host, pid, versions), how far it got (total, done,
failed, skipped: what was stored) and how it ended ("running", "completed",
"failed", "interrupted").

Shard workers write the same run at the same time, so nothing here reads,
changes and saves a whole run: an entry is added with one `$push` and updated
in place with one `$set` on the run's document, and the run key is claimed with
a compare-and-set on the dataset's document. A worker that starts or finishes
beside another never loses the other's update.
"""

from __future__ import annotations

import datetime
import os
import platform
import threading
import time

METHOD = "fiftyone_blip"
# Records of fiftyone-blip before it used FiftyOne's runs: moved into them on first use.
LEGACY_COLLECTION = "fiftyone_blip_runs"
LEASES_COLLECTION = "fiftyone_blip_leases"
# Entries kept per run key, the newest: a run document must stay far below MongoDB's 16 MB.
HISTORY_LIMIT = 500


def _db():
    import fiftyone.core.odm as foo

    return foo.get_db_conn()


def collection():
    """The collection of leases (see `Lease`)."""
    return _db()[LEASES_COLLECTION]


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


def run_key(capability: str, field: str) -> str:
    """The FiftyOne run key of a capability's results in a field ("blip_caption_caption_de")."""
    return f"blip_{capability}_{field}"


# ---------------------------------------------------------------- the run of a field


def _run_ids(dataset) -> dict:
    """Run key -> run document id of the dataset, read from the database (other processes add runs)."""
    doc = with_retry(lambda: _db().datasets.find_one({"_id": dataset._doc.id}, {"runs": 1}))
    if doc is None:
        raise ValueError(f"dataset {dataset.name!r} was deleted")
    return doc.get("runs") or {}


def _check_own(dataset, key: str, run_doc_id) -> None:
    run = with_retry(lambda: _db().runs.find_one({"_id": run_doc_id}, {"config.method": 1})) or {}
    if run.get("config", {}).get("method") != METHOD:
        raise ValueError(
            f"run key {key!r} of dataset {dataset.name!r} belongs to another run; "
            f"delete it (dataset.delete_run({key!r})) or choose another field"
        )


def check_run_key(dataset, capability: str, field: str) -> None:
    """Refuses a field whose run key the dataset already uses for a run fiftyone-blip did not register."""
    key = run_key(capability, field)
    existing = _run_ids(dataset).get(key)
    if existing is not None:
        _check_own(dataset, key, existing)


def _register(dataset, capability: str, field: str):
    """The id of the field's run document, registering the run if the dataset has none yet.

    Raises:
        ValueError: the key belongs to a run that fiftyone-blip did not register.
    """
    key = run_key(capability, field)
    for _ in range(100):
        existing = _run_ids(dataset).get(key)
        if existing is not None:
            _check_own(dataset, key, existing)
            return existing
        registered = _try_register(dataset, key, capability, field)
        if registered is not None:
            return registered
    raise RuntimeError(f"could not register run {key!r}: too many concurrent registrations")


def _try_register(dataset, key: str, capability: str, field: str):
    """Registers a new run under `key`; None if another worker registered it first.

    Two workers may register the same key at once: each inserts a run document,
    one wins the compare-and-set on the dataset's `runs.<key>`, the other
    deletes its own document and uses the winner's.
    """
    import fiftyone.constants as foc
    import fiftyone.core.runs as fors
    from fiftyone.core.odm.runs import RunDocument

    db = _db()
    config = fors.RunConfig(method=METHOD, capability=capability, field=field, history=[])
    doc = RunDocument(
        dataset_id=dataset._doc.id,
        key=key,
        version=foc.VERSION,
        timestamp=datetime.datetime.utcnow(),
        config=config.serialize(),
    ).to_mongo()
    with_retry(lambda: db.runs.insert_one(doc))
    unclaimed = {"_id": dataset._doc.id, f"runs.{key}": {"$exists": False}}
    won = with_retry(lambda: db.datasets.update_one(unclaimed, {"$set": {f"runs.{key}": doc["_id"]}}))
    if won.matched_count:
        return doc["_id"]
    with_retry(lambda: db.runs.delete_one({"_id": doc["_id"]}))
    return None


def _push(run_doc_id, entry: dict) -> None:
    """Adds an entry to a run's history once (a repeated attempt or migration adds nothing)."""
    change = {
        "$push": {"config.history": {"$each": [entry], "$sort": {"started": 1}, "$slice": -HISTORY_LIMIT}},
        "$set": {"timestamp": datetime.datetime.utcnow()},
    }
    unseen = {"_id": run_doc_id, "config.history.run_id": {"$ne": entry["run_id"]}}
    with_retry(lambda: _db().runs.update_one(unseen, change))


class Record:
    """One engine run's entry in the history of its field's run; `update` changes it in place."""

    def __init__(self, run_doc_id, run_id: str):
        self.run_doc_id = run_doc_id
        self.run_id = run_id

    def update(self, **values) -> None:
        """Sets values of this entry alone, atomically: other workers' entries are untouched."""
        change = {"$set": {f"config.history.$[entry].{name}": value for name, value in values.items()}}
        with_retry(
            lambda: _db().runs.update_one(
                {"_id": self.run_doc_id}, change, array_filters=[{"entry.run_id": self.run_id}]
            )
        )


def view_stages(samples) -> list[str] | None:
    """The view's stages as FiftyOne's runs store them (`view_stages`), None for a whole dataset."""
    import fiftyone.core.view as fov
    from bson import json_util

    if not isinstance(samples, fov.DatasetView):
        return None
    return [json_util.dumps(stage) for stage in samples._serialize(include_uuids=False)]


def start(samples, task, shard, batch_size: int, run_id: str, total: int) -> Record:
    """Adds a "running" entry for a new engine run to its field's run (registered if new).

    The run's `view_stages` become those of `samples`, so FiftyOne's
    `dataset.load_run_view(key)` gives the view of the field's latest run.
    """
    dataset = samples._root_dataset
    migrate(dataset)
    run_doc_id = _register(dataset, task.capability, task.record_field)
    stages = view_stages(samples)
    with_retry(lambda: _db().runs.update_one({"_id": run_doc_id}, {"$set": {"view_stages": stages}}))
    entry = {
        "run_id": run_id,
        "fingerprint": task.fingerprint,
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
        "total": total,
        "done": 0,
        "failed": 0,
        "skipped": 0,
    }
    _push(run_doc_id, entry)
    refresh(dataset)
    return Record(run_doc_id, run_id)


def entry(dataset, capability: str, field: str, run_id: str) -> Record:
    """The history entry of an engine run that has ended, to add what the capability computed after it
    (e.g. an evaluation's corpus figures)."""
    key = run_key(capability, field)
    run_doc_id = _run_ids(dataset).get(key)
    if run_doc_id is None:
        raise ValueError(f"dataset {dataset.name!r} has no run {key!r}")
    return Record(run_doc_id, run_id)


def refresh(dataset) -> None:
    """Reloads the dataset's runs in this process, so `dataset.get_run_info` shows the new state."""
    try:
        dataset._doc.reload("runs")
    except Exception:  # a dataset deleted meanwhile has no runs to show
        pass


def _own_runs(dataset) -> list[dict]:
    """The dataset's fiftyone-blip run documents (key, config), read fresh from the database."""
    ids = list(_run_ids(dataset).values())
    query = {"_id": {"$in": ids}, "config.method": METHOD}
    return with_retry(lambda: list(_db().runs.find(query, {"key": 1, "config": 1})))


def mark_interrupted(dataset) -> None:
    """Entries of runs on this host whose process is gone become "interrupted"."""
    host = platform.node()
    for run in _own_runs(dataset):
        for entry in run["config"].get("history", []):
            if entry.get("status") == "running" and entry.get("host") == host and entry.get("pid"):
                if not pid_alive(entry["pid"]):
                    # only while still "running": an entry that ended meanwhile keeps its status
                    with_retry(
                        lambda run=run, entry=entry: _db().runs.update_one(
                            {"_id": run["_id"]},
                            {"$set": {"config.history.$[entry].status": "interrupted"}},
                            array_filters=[{"entry.run_id": entry["run_id"], "entry.status": "running"}],
                        )
                    )


def list_runs(dataset) -> list[dict]:
    """Returns the run records of a dataset, oldest first.

    Each record is one history entry of a fiftyone-blip run, with its run key,
    capability, field and the dataset's current name and id beside it.
    """
    dataset = dataset._root_dataset
    migrate(dataset)
    mark_interrupted(dataset)
    records = []
    for run in _own_runs(dataset):
        config = run["config"]
        for entry in config.get("history", []):
            records.append(
                {
                    "run_key": run["key"],
                    "dataset_id": str(dataset._doc.id),
                    "dataset": dataset.name,
                    "capability": config.get("capability"),
                    "field": config.get("field"),
                    **entry,
                }
            )
    return sorted(records, key=lambda record: record["started"])


def migrate(dataset) -> None:
    """Moves the dataset's records from the old `fiftyone_blip_runs` collection into its FiftyOne runs.

    Each record joins its field's run history (once: a record already there by
    run id is not added again), then leaves the old collection. A record that
    cannot move (its run key is held by a run fiftyone-blip did not make, e.g. a
    user's own `blip_...` run; or it names no capability and field) stays where
    it is, skipped with a logged warning: it never blocks a run into another field
    (a run into its own field is refused by `check_run_key`, in one line).
    """
    legacy = _db()[LEGACY_COLLECTION]
    query = {"dataset_id": str(dataset._doc.id), "run_id": {"$exists": True}}
    old = with_retry(lambda: list(legacy.find(query)))
    moved = False
    for record in old:
        capability, field = record.get("capability"), record.get("field")
        if not isinstance(capability, str) or not isinstance(field, str):
            _warn_unmovable(dataset, record, "it names no capability and field")
            continue
        try:
            run_doc_id = _register(dataset, capability, field)
        except ValueError as error:  # the run key is another run's
            _warn_unmovable(dataset, record, str(error))
            continue
        entry = {k: v for k, v in record.items() if k not in ("_id", "dataset_id", "dataset", "capability", "field")}
        _push(run_doc_id, entry)
        with_retry(lambda record=record: legacy.delete_one({"_id": record["_id"]}))
        moved = True
    if moved:
        refresh(dataset)


def _warn_unmovable(dataset, record: dict, why: str) -> None:
    import logging

    logging.getLogger(__name__).warning(
        "old run record %s of dataset %r stays in %s: %s", record.get("run_id"), dataset.name, LEGACY_COLLECTION, why
    )


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


class ClaimLost(RuntimeError):
    """Another run took over a field this run claimed (its heartbeat had gone stale): it writes nothing more."""


class Lease:
    """A claim on (dataset, fields, shard), taken atomically field by field, kept alive by a heartbeat thread.

    A run whose process was paused past `LEASE_STALE_SECONDS` (a closed laptop
    lid, a frozen VM, a database stall) may find its claim taken over when it
    wakes: `check` before each write says so, and the run stops.
    """

    def __init__(self, dataset, fields, shard, run_id: str):
        fields = [fields] if isinstance(fields, str) else list(dict.fromkeys(fields))
        self.dataset_name = dataset.name
        self.keys = {lease_key(str(dataset._doc.id), field): field for field in fields}
        self.shard = list(shard) if shard else None
        self.run_id = run_id
        self.taken: list[str] = []
        self._stop = threading.Event()
        self._thread = None

    def take(self) -> None:
        """Claims every field; a ValueError names the live run that holds an overlapping claim (nothing is kept)."""
        try:
            for key, field in self.keys.items():
                self._take(key, field)
                self.taken.append(key)
        except BaseException:
            self.release()
            raise
        self._thread = threading.Thread(target=self._beat, name="blip-lease", daemon=True)
        self._thread.start()

    def _take(self, key: str, field: str) -> None:
        from pymongo.errors import DuplicateKeyError

        me = {"run_id": self.run_id, "shard": self.shard, "host": platform.node(), "pid": os.getpid(), "since": now()}
        records = collection()
        for _ in range(100):
            doc = with_retry(lambda: records.find_one({"_id": key}))
            me["heartbeat"] = now()
            if doc is None:
                try:
                    with_retry(lambda: records.insert_one({"_id": key, "holders": [me], "version": 0}))
                    return
                except DuplicateKeyError:
                    continue
            live = [h for h in doc.get("holders", []) if _holder_alive(h)]
            for holder in live:
                if _overlap(holder.get("shard"), self.shard):
                    raise ValueError(self._busy(field, holder))
            # compare-and-set on the version: two runs taking the field at once cannot both win
            claim = {"_id": key, "version": doc.get("version", 0)}
            change = {"$set": {"holders": [*live, dict(me)]}, "$inc": {"version": 1}}
            result = with_retry(lambda claim=claim, change=change: records.update_one(claim, change))
            if result.matched_count:
                return
        raise RuntimeError(f"could not claim field {field!r}: too many concurrent claims")

    def _busy(self, field: str, holder: dict) -> str:
        shard = f", shard {holder['shard'][0]}/{holder['shard'][1]}" if holder.get("shard") else ""
        since = f", since {holder['since']:%Y-%m-%d %H:%M:%S} UTC" if holder.get("since") else ""
        return (
            f"field {field!r} of dataset {self.dataset_name!r} is being written by run {holder['run_id']} "
            f"(pid {holder.get('pid')} on {holder.get('host')}{shard}{since}): wait for it to end, "
            f"or give each worker its own shard"
        )

    def check(self) -> None:
        """Raises `ClaimLost` unless this run still holds every field it claimed."""
        docs = with_retry(lambda: list(collection().find({"_id": {"$in": self.taken}}, {"holders": 1})))
        holders = {doc["_id"]: doc.get("holders", []) for doc in docs}
        for key in self.taken:
            mine = [h for h in holders.get(key, []) if h.get("run_id") == self.run_id]
            if not mine:
                others = [h.get("run_id") for h in holders.get(key, [])]
                taker = f"run {others[-1]}" if others else "another run"
                raise ClaimLost(
                    f"claim on field {self.keys[key]!r} lost to {taker}; nothing more written; re-run to resume"
                )

    def _beat(self) -> None:
        import pymongo

        while not self._stop.wait(HEARTBEAT_SECONDS):
            try:
                with pymongo.timeout(DB_ATTEMPT_SECONDS):
                    collection().update_many(
                        {"_id": {"$in": self.taken}, "holders.run_id": self.run_id},
                        {"$set": {"holders.$.heartbeat": now()}, "$inc": {"version": 1}},
                    )
            except Exception:  # a missed beat is retried at the next one
                pass

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=DB_ATTEMPT_SECONDS + 1)
        try:
            for key in self.taken:
                with_retry(
                    lambda key=key: collection().update_one(
                        {"_id": key}, {"$pull": {"holders": {"run_id": self.run_id}}, "$inc": {"version": 1}}
                    )
                )
                # a lease nobody holds is not kept (a taker that read it meanwhile fails its compare-and-set)
                with_retry(lambda key=key: collection().delete_one({"_id": key, "holders": {"$size": 0}}))
        except DatabaseUnreachable:
            pass  # the claim lapses by itself: its process ends and its heartbeat stops
        self.taken = []
