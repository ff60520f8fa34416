"""Test set-up: a private FiftyOne home (its own MongoDB) and the plugin installed.

The environment is set before FiftyOne is imported, so every test, the CLI and
the operators share one real database in a temporary folder, and nothing
touches the user's own datasets.

The test session starts its own mongod and points FIFTYONE_DATABASE_URI at it.
FiftyOne's own database service would not do: a new process attaches to any
FiftyOne database service already running for the same user, whatever its
database folder, so concurrent sessions on one machine shared one database
(and saw each other's datasets, with image files in folders already deleted).
Worker processes that tests start inherit the URI and reach the same database.
"""

import atexit
import importlib.util
import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

_HOME = Path(tempfile.mkdtemp(prefix="fiftyone-blip-tests-"))
# Registered first, so it runs last: after mongod has stopped (exit handlers run last-registered first).
atexit.register(shutil.rmtree, _HOME, ignore_errors=True)


def _start_private_mongod(folder: Path) -> str:
    """Starts the mongod that ships with FiftyOne on a free local port; returns its URI."""
    package = Path(importlib.util.find_spec("fiftyone").submodule_search_locations[0])
    mongod = package / "db" / "bin" / "mongod"
    folder.mkdir(parents=True)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    args = [str(mongod), "--dbpath", str(folder), "--port", str(port), "--bind_ip", "127.0.0.1"]
    args += ["--nounixsocket", "--logpath", str(folder / "mongod.log")]
    process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def stop():
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()

    atexit.register(stop)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"mongod exited with {process.returncode}; see {folder / 'mongod.log'}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return f"mongodb://127.0.0.1:{port}"
        except OSError:
            time.sleep(0.2)
    raise RuntimeError("mongod did not start within 120 s")


os.environ["FIFTYONE_DATABASE_DIR"] = str(_HOME / "db")
os.environ["FIFTYONE_DATABASE_URI"] = _start_private_mongod(_HOME / "db")
os.environ.pop("FIFTYONE_PRIVATE_DATABASE_PORT", None)
os.environ["FIFTYONE_DATASET_ZOO_DIR"] = str(_HOME / "zoo")
os.environ["FIFTYONE_PLUGINS_DIR"] = str(_HOME / "plugins")
os.environ["FIFTYONE_MODEL_ZOO_DIR"] = str(_HOME / "models")
os.environ["FIFTYONE_BRAIN_SIMILARITY_LANCEDB_URI"] = str(_HOME / "lancedb")
os.environ["FIFTYONE_DATABASE_VALIDATION"] = "false"
os.environ["FIFTYONE_DO_NOT_TRACK"] = "true"
os.environ["FIFTYONE_BLIP_CACHE_DIR"] = str(_HOME / "cache")  # the bundled adapters' copy
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


@pytest.fixture
def repeated_shapes(fo):
    """A factory: `repeated_shapes(name, count)` is a fresh dataset of `count` samples, the 48
    held-out shapes images (with their `gt_caption`) repeated; deleted after the test."""
    import fiftyone_blip

    names = []

    def make(name, count):
        base = fiftyone_blip.load_shapes_dataset("tests-shapes", count=48, split="test")
        if fo.dataset_exists(name):
            fo.delete_dataset(name)
        dataset = fo.Dataset(name)
        paths, truths = base.values(["filepath", "gt_caption"])
        samples = [fo.Sample(filepath=paths[i % len(paths)], gt_caption=truths[i % len(paths)]) for i in range(count)]
        dataset.add_samples(samples, progress=False)
        names.append(name)
        return dataset

    yield make
    for name in names:
        if fo.dataset_exists(name):
            fo.delete_dataset(name)


def _tiny_blip(task: str):
    """The bundled shapes-tiny `task` processor at 64 px and a one-layer, 32-wide BLIP config for its
    tokenizer (patch 16: a 4x4 grid, unlike the bundled sizes)."""
    from transformers import BlipProcessor

    from fiftyone_blip.models import BUNDLED
    from fiftyone_blip.shapes.train import build_config

    processor = BlipProcessor.from_pretrained(BUNDLED["shapes-tiny"][task])
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
    return processor, config


@pytest.fixture(scope="session")
def tiny_blip():
    """`_tiny_blip`: a function of the task ("caption", "vqa") giving a processor and a tiny config."""
    return _tiny_blip


@pytest.fixture(scope="session")
def tiny_random_captioner(tmp_path_factory):
    """A tiny random BLIP captioner built in the test, saved as a local directory.

    Its vision input is 64 px with patch 16 (a 4x4 grid): a config unlike the
    bundled one, to show nothing depends on shapes-tiny's sizes.
    """
    import torch
    from transformers import BlipForConditionalGeneration

    directory = tmp_path_factory.mktemp("tiny-random-captioner")
    processor, config = _tiny_blip("caption")
    torch.manual_seed(0)
    BlipForConditionalGeneration(config).save_pretrained(directory)
    processor.save_pretrained(directory)
    return directory
