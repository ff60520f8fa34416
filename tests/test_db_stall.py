"""MongoDB stalls: a run against a mongod that is stopped (SIGSTOP) for a while.

Each test starts its own mongod (FiftyOne's bundled binary) so that stopping it
leaves the session's database alone; the run happens in a worker process
pointed at it.
"""

import importlib.util
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

WORKER = """
import sys, time
import fiftyone as fo
from fiftyone_blip import engine, run_records
from fiftyone_blip.settings import RunOptions

run_records.DB_RETRY_SECONDS = float(sys.argv[1])
run_records.DB_ATTEMPT_SECONDS = 1.0
count = int(sys.argv[2])
media = sys.argv[3]  # never read: the task does not open images
if fo.dataset_exists("stall"):
    dataset = fo.load_dataset("stall")
else:
    dataset = fo.Dataset("stall", persistent=True)
    dataset.add_samples([fo.Sample(filepath=f"{media}/stall-{i:05d}.jpg") for i in range(count)], progress=False)

def step(inputs):
    time.sleep(0.1)
    return [{"size": x} for x in inputs]

task = engine.Task(
    capability="test", field="size", fields={"size": fo.IntField}, settings={}, identity={},
    prepare=lambda path: len(path), step=step,
)
said = []

def progress(done, total):
    # chunks of 8 are written as they fill: by 40 processed, at least 32 are stored
    if done >= 40 and not said:
        said.append(print("RUNNING", flush=True))

try:
    summary = engine.run(dataset, task, RunOptions(batch_size=8, chunk_size=8, num_workers=0, progress=progress))
    print("DONE", summary.done, summary.skipped, dataset.count("size"), flush=True)
except Exception as error:
    print("ERROR", error, flush=True)
"""


@pytest.fixture
def own_mongod(tmp_path):
    package = Path(importlib.util.find_spec("fiftyone").submodule_search_locations[0])
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    folder = tmp_path / "db"
    folder.mkdir()
    args = [str(package / "db" / "bin" / "mongod"), "--dbpath", str(folder), "--port", str(port)]
    args += ["--bind_ip", "127.0.0.1", "--nounixsocket", "--logpath", str(folder / "mongod.log")]
    process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            assert time.monotonic() < deadline and process.poll() is None, "mongod did not start"
            time.sleep(0.2)
    yield process, f"mongodb://127.0.0.1:{port}", tmp_path
    os.kill(process.pid, signal.SIGCONT)
    process.terminate()
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()


def _worker(uri: str, retry_seconds: float, count: int, media: Path) -> subprocess.Popen:
    env = {**os.environ, "FIFTYONE_DATABASE_URI": uri}
    return subprocess.Popen(
        [sys.executable, "-c", WORKER, str(retry_seconds), str(count), str(media)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )


def _stall(mongod: subprocess.Popen, worker: subprocess.Popen, after: float, seconds: float) -> list[str]:
    """Waits until the worker has stored results, stops mongod for `seconds`, returns the worker's output."""
    assert worker.stdout.readline().strip() == "RUNNING"
    time.sleep(after)
    os.kill(mongod.pid, signal.SIGSTOP)
    try:
        time.sleep(seconds)
    finally:
        os.kill(mongod.pid, signal.SIGCONT)
    out, _ = worker.communicate(timeout=300)
    return out.strip().splitlines()


def test_a_short_stall_is_waited_out_and_every_result_lands(own_mongod):
    mongod, uri, media = own_mongod
    lines = _stall(mongod, _worker(uri, retry_seconds=60, count=400, media=media), after=0.5, seconds=5.0)
    assert lines[-1] == "DONE 400 0 400"


def test_a_stall_longer_than_the_limit_stops_with_one_line_and_resume_finishes(own_mongod):
    mongod, uri, media = own_mongod
    lines = _stall(mongod, _worker(uri, retry_seconds=2, count=400, media=media), after=0.5, seconds=10.0)
    assert lines[-1] == "ERROR database unreachable for 2 s; re-run to resume"
    resumed = _worker(uri, retry_seconds=60, count=400, media=media)
    out, _ = resumed.communicate(timeout=300)
    word, done, skipped, stored = out.strip().splitlines()[-1].split()
    assert word == "DONE" and int(skipped) > 0 and int(done) + int(skipped) == 400 == int(stored)
