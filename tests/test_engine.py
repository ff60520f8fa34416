"""The engine: crash safety, resume, shards over two delegated workers, OOM halving, SDPA."""

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

import fiftyone_blip
from fiftyone_blip import engine
from fiftyone_blip.settings import RunOptions

CAPTION_SCRIPT = """
import sys
import fiftyone as fo
from fiftyone_blip import captions, engine, models
from fiftyone_blip.settings import RunOptions
dataset = fo.load_dataset(sys.argv[1])
task = captions.caption_task(models.load_model("shapes-tiny"), captions.CaptionSettings())
engine.run(dataset, task, RunOptions(batch_size=4, chunk_size=16, progress=False))
"""


def _written(dataset, field="caption"):
    """Results written so far, as another process sees them."""
    dataset.reload()
    return dataset.count(field) if field in dataset.get_field_schema() else 0


def _wait_for(condition, timeout, interval=0.2):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(interval)
    return False


@pytest.fixture
def big_dataset(repeated_shapes):
    """480 shapes samples (the 48 test images repeated) in a fresh dataset."""
    return repeated_shapes("engine-big", 480)


def test_sigkill_loses_at_most_the_unwritten_chunk_and_resume_finishes(big_dataset):
    worker = subprocess.Popen([sys.executable, "-c", CAPTION_SCRIPT, big_dataset.name])
    try:
        assert _wait_for(lambda: _written(big_dataset) >= 16, timeout=120), "no chunk was written"
        worker.send_signal(signal.SIGKILL)
        worker.wait(timeout=30)
    finally:
        if worker.poll() is None:
            worker.kill()
    written = _written(big_dataset)
    assert 16 <= written < len(big_dataset), "the run should have been killed mid-way"
    records = fiftyone_blip.runs(big_dataset)
    assert [r["status"] for r in records] == ["interrupted"]

    summary = fiftyone_blip.caption(big_dataset, model="shapes-tiny", progress=False)
    assert summary.skipped == written and summary.done == len(big_dataset) - written
    assert _written(big_dataset) == len(big_dataset)
    # every result came from the same model and settings, exactly one per sample
    assert len(set(big_dataset.values("caption_run"))) == 1
    agree = sum(a == b for a, b in zip(*big_dataset.values(["caption", "gt_caption"])))
    assert agree >= 0.9 * len(big_dataset)


def test_two_delegated_workers_share_a_dataset_by_shards(big_dataset, plugin_installed):
    import fiftyone.operators as foo
    from fiftyone.operators.delegated import DelegatedOperationService

    uri = "@fiftyone-blip/blip/caption_samples"
    for shard in ("0/2", "1/2"):
        foo.execute_operator(
            uri,
            ctx=dict(
                dataset=big_dataset,
                params=dict(model="shapes-tiny", field="caption", shard=shard, view_target="DATASET"),
            ),
            request_delegation=True,
        ).raise_exceptions()
    service = DelegatedOperationService()
    ops = service.list_operations(dataset_name=big_dataset.name)
    assert len(ops) == 2
    fiftyone = os.path.join(os.path.dirname(sys.executable), "fiftyone")
    # Two workers on one machine: one torch thread each, as one would run them per core.
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    workers = [
        subprocess.Popen(
            [fiftyone, "delegated", "launch"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        for _ in range(2)
    ]
    try:
        finished = _wait_for(
            lambda: all(service.get(op.id).run_state in ("completed", "failed") for op in ops), timeout=300, interval=1
        )
    finally:
        for worker in workers:
            worker.terminate()
        for worker in workers:
            try:
                worker.wait(timeout=20)
            except subprocess.TimeoutExpired:
                worker.kill()
    assert finished, "the delegated workers did not finish"
    assert [service.get(op.id).run_state for op in ops] == ["completed", "completed"]
    records = fiftyone_blip.runs(big_dataset)
    assert sorted(r["shard"] for r in records) == ["0/2", "1/2"]
    assert sum(r["done"] for r in records) == len(big_dataset)  # no overlap, no gaps
    assert len({r["pid"] for r in records}) == 2  # two processes did the work
    assert _written(big_dataset) == len(big_dataset)


def test_shard_assignment_is_a_partition():
    ids = [f"{i:024x}" for i in range(1000)]
    shards = [engine.shard_of(i, 7) for i in ids]
    assert set(shards) == set(range(7))
    counts = np.bincount(shards)
    assert counts.max() - counts.min() <= 2


def test_out_of_memory_halves_the_batch(fresh_dataset):
    import fiftyone as fo

    calls = []

    def step(inputs):
        calls.append(len(inputs))
        if len(inputs) > 2:
            raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return [{"size": int(x)} for x in inputs]

    task = engine.Task(
        capability="test",
        field="size",
        fields={"size": fo.IntField},
        settings={},
        identity={},
        prepare=lambda path: len(path),
        step=step,
    )
    summary = engine.run(fresh_dataset, task, RunOptions(batch_size=8, progress=False))
    assert summary.done == 48 and max(calls) == 8 and calls.count(2) >= 24
    assert fresh_dataset.values("size") == [len(p) for p in fresh_dataset.values("filepath")]


def test_a_model_error_keeps_what_was_computed(fresh_dataset):
    import fiftyone as fo

    def step(inputs):
        if len(calls) == 3:
            raise RuntimeError("the model broke")
        calls.append(1)
        return [{"one": 1} for _ in inputs]

    calls = []
    task = engine.Task(
        capability="test",
        field="one",
        fields={"one": fo.IntField},
        settings={},
        identity={},
        prepare=lambda path: 0,
        step=step,
    )
    with pytest.raises(RuntimeError, match="the model broke"):
        engine.run(fresh_dataset, task, RunOptions(batch_size=4, progress=False, chunk_size=1000))
    assert fresh_dataset.count("one") == 12  # three batches written despite the crash
    assert fiftyone_blip.runs(fresh_dataset)[-1]["status"] == "failed"


def test_progress_callback_reaches_the_total(fresh_dataset):
    seen = []
    fiftyone_blip.caption(fresh_dataset, model="shapes-tiny", batch_size=16, progress=lambda d, t: seen.append((d, t)))
    assert seen[-1] == (48, 48) and [d for d, _ in seen] == sorted(d for d, _ in seen)


def test_sdpa_gives_the_same_outputs_as_eager(tiny_random_captioner):
    import torch
    from transformers import BlipForConditionalGeneration

    from fiftyone_blip.sdpa import use_eager, use_sdpa

    model = BlipForConditionalGeneration.from_pretrained(tiny_random_captioner).eval()
    pixels = torch.randn(3, 3, 64, 64)
    ids = torch.randint(5, model.config.text_config.vocab_size, (3, 7))
    mask = torch.ones_like(ids)
    mask[0, 5:] = 0
    with torch.no_grad():
        eager = model(pixel_values=pixels, input_ids=ids, attention_mask=mask).logits
        eager_gen = model.generate(pixel_values=pixels, max_new_tokens=8, min_new_tokens=8)
        assert use_sdpa(model) == 2 * 1 + 1  # one vision layer; self + cross attention in one text layer
        fast = model(pixel_values=pixels, input_ids=ids, attention_mask=mask).logits
        fast_gen = model.generate(pixel_values=pixels, max_new_tokens=8, min_new_tokens=8)
        use_eager(model)
        back = model(pixel_values=pixels, input_ids=ids, attention_mask=mask).logits
    assert torch.allclose(eager, fast, atol=1e-4)
    assert torch.equal(eager_gen, fast_gen)
    assert torch.equal(eager, back)
