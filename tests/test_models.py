"""The one loader: bundled names, local directories, hub ids offline, and refusals."""

import json
import shutil
import subprocess
import sys

import pytest

from fiftyone_blip import models


def test_bundled_models_load_with_the_salesforce_classes():
    from transformers import BlipForConditionalGeneration, BlipForImageTextRetrieval

    captioner = models.load_model("shapes-tiny", task="caption", device="cpu")
    matcher = models.load_model("shapes-tiny", task="match", device="cpu")
    assert isinstance(captioner.model, BlipForConditionalGeneration)
    assert isinstance(matcher.model, BlipForImageTextRetrieval)
    assert captioner.name == "shapes-tiny" and captioner.dtype == "float32"
    assert captioner.grid_size == 96 // 16
    # the same layout as the Salesforce checkpoints
    for name in ("config.json", "model.safetensors", "processor_config.json", "tokenizer.json"):
        assert (models.BUNDLED["shapes-tiny"]["caption"] / name).exists()
    # loading twice reuses the cached model
    assert models.load_model("shapes-tiny", device="cpu") is captioner


def test_local_directory(tiny_random_captioner):
    loaded = models.load_model(str(tiny_random_captioner), device="cpu")
    assert loaded.path == str(tiny_random_captioner) and loaded.grid_size == 4


def test_uncached_hub_id_offline_is_one_clear_line():
    with pytest.raises(models.ModelLoadError) as info:
        models.load_model("Salesforce/blip-image-captioning-large", device="cpu")
    message = str(info.value)
    assert "\n" not in message
    assert "cache" in message and "hub" in message and "directory" in message


def test_non_blip_and_wrong_task_configs_are_refused(tmp_path, tiny_random_captioner):
    other = tmp_path / "bert"
    other.mkdir()
    (other / "config.json").write_text(json.dumps({"model_type": "bert"}))
    (other / "model.safetensors").write_bytes(b"")
    with pytest.raises(models.ModelLoadError, match="not a BLIP model"):
        models.load_model(str(other), device="cpu")
    with pytest.raises(models.ModelLoadError, match="BlipForImageTextRetrieval"):
        models.load_model(str(tiny_random_captioner), task="match", device="cpu")


def test_pickle_weights_are_refused(tmp_path, tiny_random_captioner):
    copy = tmp_path / "pickled"
    shutil.copytree(tiny_random_captioner, copy)
    (copy / "model.safetensors").rename(copy / "pytorch_model.bin")
    with pytest.raises(models.ModelLoadError, match="safetensors"):
        models.load_model(str(copy), device="cpu")


def test_bad_arguments():
    with pytest.raises(models.ModelLoadError, match="does not exist"):
        models.load_model("./no/such/dir")
    with pytest.raises(ValueError, match="device"):
        models.load_model("shapes-tiny", device="tpu")
    with pytest.raises(ValueError, match="dtype"):
        models.load_model("shapes-tiny", dtype="int4")
    with pytest.raises(ValueError, match="CPU only"):
        models.resolve_dtype("int8", "cuda")
    with pytest.raises(ValueError, match="task"):
        models.load_model("shapes-tiny", task="segment")


def test_keep_freed_memory_can_be_turned_off(monkeypatch):
    import sys

    monkeypatch.setenv("FIFTYONE_BLIP_KEEP_FREED_MEMORY", "0")
    assert models.keep_freed_memory() is False
    monkeypatch.delenv("FIFTYONE_BLIP_KEEP_FREED_MEMORY")
    assert models.keep_freed_memory() is (sys.platform == "linux")


_OFFLINE_PROBE = """
import json, sys, time
from fiftyone_blip import models
# imported before the clock starts: only the load is timed, not the imports
import huggingface_hub, safetensors, torch
from transformers import BlipForConditionalGeneration, BlipProcessor
result = {}
for name in sys.argv[1:]:
    started = time.time()
    try:
        loaded = models.load_model(name, task="caption", device="cpu")
        result[name] = {"loaded": [loaded.path, loaded.revision]}
    except Exception as error:
        result[name] = {"error": f"{type(error).__name__}: {error}"}
    result[name]["seconds"] = time.time() - started
print(json.dumps(result))
"""


def test_a_hub_model_fails_fast_without_network_and_loads_from_the_cache(tmp_path):
    """Issue 24, part 2, item 15: with no network and no HF_HUB_OFFLINE, a hub model took 33-40 s and a
    dozen "Retrying" lines before its one-line error. A short probe of the endpoint finds the hub
    unreachable: an uncached model fails at once with advice, a cached one loads from the cache."""
    import os
    import socket

    with socket.socket() as s:  # a local port nothing listens on: connections are refused
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    home = tmp_path / "hf-home"
    commit = "1" * 40
    repo = home / "hub" / "models--someorg--cached-captioner"
    shutil.copytree(models.BUNDLED["shapes-tiny"]["caption"], repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HTTP", "http", "ALL_PROXY", "all_proxy"))}
    env.update(HF_ENDPOINT=f"http://127.0.0.1:{port}", HF_HOME=str(home))
    done = subprocess.run(
        [sys.executable, "-c", _OFFLINE_PROBE, "someorg/not-cached", "someorg/cached-captioner"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.strip().splitlines()[-1])
    missing, cached = result["someorg/not-cached"], result["someorg/cached-captioner"]
    assert "not in the local Hugging Face cache and the hub cannot be reached" in missing["error"]
    assert "HF_HUB_OFFLINE=1" in missing["error"] and "hf download someorg/not-cached" in missing["error"]
    assert missing["seconds"] < 5, missing
    # named by its hub id and commit, as when it loads online: its results stay its own
    assert cached.get("loaded") == ["someorg/cached-captioner", commit] and cached["seconds"] < 30, cached
    assert "Retrying" not in done.stderr
