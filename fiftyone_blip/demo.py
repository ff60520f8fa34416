"""The main job of `make demo`: shapes dataset -> plugin -> captions -> summary."""

from __future__ import annotations

import time


def exact_match(dataset, field: str = "caption", truth: str = "gt_caption") -> float:
    """Share of samples whose caption equals the ground truth exactly."""
    predicted, expected = dataset.values([field, truth])
    hits = sum(1 for p, t in zip(predicted, expected) if p is not None and p == t)
    return hits / len(expected) if expected else 0.0


def run(name: str = "shapes-demo", count: int = 500, echo=print) -> dict:
    """Builds the demo dataset, installs the plugin, captions with shapes-tiny and reports.

    A dataset `name` that the shapes loader built is reused as it is (its runs, indexes and
    saved views stay; captions already made by shapes-tiny are skipped); any other dataset of
    that name is refused before anything is written.
    """
    import fiftyone as fo

    import fiftyone_blip
    from fiftyone_blip import plugin, shapes

    started = time.time()
    if fo.dataset_exists(name):
        dataset = shapes.open_built(name)
    else:
        dataset = fiftyone_blip.load_shapes_dataset(name, count=count, split="test")
    link = plugin.install()
    summary = fiftyone_blip.caption(dataset, model="shapes-tiny", batch_size=32)
    score = exact_match(dataset)
    seconds = time.time() - started
    echo("")
    echo(f"dataset        {dataset.name} ({len(dataset)} held-out shapes images)")
    echo(
        f"captioned      {summary.done} ({summary.failed} failed, {summary.skipped} already done) "
        f"in {summary.seconds:.1f} s, model shapes-tiny"
    )
    echo(f"exact match    {score:.3f} against the ground-truth captions")
    echo(f"example        {dataset.first()['caption']!r}")
    echo(f"plugin         {link}")
    echo(f"total time     {seconds:.1f} s")
    echo("")
    echo(f"open it in the App:  .venv/bin/fiftyone-blip app {dataset.name}")
    echo('  (the App with "Schedule" on and a delegated launcher; `fiftyone delegated list` shows runs)')
    return {"exact_match": score, "done": summary.done, "failed": summary.failed, "seconds": seconds}
