"""The `fiftyone-blip` command line.

Each command is a thin wrapper over one SDK function; library errors become
one-line click errors. Heavy imports happen inside commands, so `--help` is fast.
"""

from __future__ import annotations

import functools
import sys

import click

from fiftyone_blip import captions as caption_settings  # light: no torch at import


def translate_errors(function):
    """Turns library errors into one-line click errors."""

    @functools.wraps(function)
    def wrapper(*args, **kwargs):
        from fiftyone_blip.models import ModelLoadError

        try:
            return function(*args, **kwargs)
        except (ValueError, ModelLoadError) as error:
            raise click.ClickException(str(error).splitlines()[0]) from None

    return wrapper


def load_samples(dataset_name: str, view_name: str | None = None):
    import fiftyone as fo

    if not fo.dataset_exists(dataset_name):
        names = ", ".join(fo.list_datasets()) or "none"
        raise click.ClickException(f"dataset {dataset_name!r} not found (datasets: {names})")
    dataset = fo.load_dataset(dataset_name)
    if view_name is None:
        return dataset
    if not dataset.has_saved_view(view_name):
        names = ", ".join(dataset.list_saved_views()) or "none"
        raise click.ClickException(f"dataset {dataset_name!r} has no saved view {view_name!r} (views: {names})")
    return dataset.load_saved_view(view_name)


@click.group()
@click.version_option(package_name="fiftyone-blip")
def main():
    """BLIP for FiftyOne datasets: captions and more, from the command line.

    \b
    Quick start (offline, with the bundled shapes-tiny model):
        fiftyone-blip shapes shapes-demo --count 200
        fiftyone-blip caption shapes-demo --model shapes-tiny
        fiftyone-blip runs shapes-demo
    """


@main.command()
@click.argument("dataset")
@click.option(
    "-m",
    "--model",
    envvar="FIFTYONE_BLIP_CAPTION_MODEL",
    default=None,
    help="Hub id, local directory or 'shapes-tiny'. [default: Salesforce/blip-image-captioning-base]",
)
@click.option("-f", "--field", default="caption", show_default=True, help="Field to write the caption to.")
@click.option("-s", "--strategy", type=click.Choice(caption_settings.STRATEGIES), default="greedy", show_default=True)
@click.option("-b", "--num-beams", type=int, default=None, help="Beams, 1..10. [default: 3 beam, 4 diverse-beam]")
@click.option("--num-beam-groups", type=int, default=2, show_default=True, help="Groups for diverse-beam.")
@click.option("--diversity-penalty", type=float, default=1.0, show_default=True)
@click.option("--top-k", type=int, default=50, show_default=True, help="Sampling: keep the k most likely tokens.")
@click.option("--top-p", type=float, default=1.0, show_default=True, help="Sampling: nucleus probability mass.")
@click.option("--temperature", type=float, default=1.0, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True, help="Sampling seed.")
@click.option("--min-new-tokens", type=int, default=1, show_default=True)
@click.option("--max-new-tokens", type=int, default=30, show_default=True, help="1..128.")
@click.option("--repetition-penalty", type=float, default=1.0, show_default=True)
@click.option("--no-repeat-ngram-size", type=int, default=0, show_default=True)
@click.option("-p", "--prompt", default=None, help="Text the caption continues, e.g. 'a picture of'.")
@click.option(
    "--resize",
    type=click.Choice(["squash", "center-crop", "letterbox"]),
    default="squash",
    show_default=True,
    help="How images reach the model's square input.",
)
@click.option("--batch-size", type=int, default=16, show_default=True)
@click.option(
    "--device",
    type=click.Choice(["auto", "cpu", "cuda", "mps"]),
    default="auto",
    envvar="FIFTYONE_BLIP_DEVICE",
    show_default=True,
)
@click.option(
    "--dtype",
    type=click.Choice(["auto", "float32", "bfloat16", "float16", "int8"]),
    default="auto",
    show_default=True,
    help="auto: float32 on CPU, bfloat16 on GPUs; int8: dynamic quantization, fastest on CPU.",
)
@click.option(
    "--workers", type=int, default=None, help="Decode threads, 0 for inline. [default: one per core, at most 8]"
)
@click.option("--shard", default=None, help="Caption only shard I of N, as I/N (e.g. 0/4).")
@click.option("--view", "view_name", default=None, help="A saved view of the dataset to caption.")
@click.option("--overwrite", is_flag=True, help="Recompute samples already captioned with these settings.")
@click.option("-q", "--quiet", is_flag=True, help="No progress bar.")
@translate_errors
def caption(dataset, view_name, workers, quiet, **options):
    """Caption every image of DATASET into a string field.

    Writes FIELD, FIELD_confidence, FIELD_error and FIELD_run. Samples already
    captioned by the same model and settings are skipped, so re-running an
    interrupted command finishes the rest.

    \b
    Examples:
        fiftyone-blip caption my-dataset
        fiftyone-blip caption my-dataset -s beam -b 5 --max-new-tokens 40
        fiftyone-blip caption my-dataset -s sample --top-p 0.9 --seed 1 -f caption_sampled
        fiftyone-blip caption my-dataset -p "a picture of" --resize letterbox
        fiftyone-blip caption my-dataset --shard 0/2   # and --shard 1/2 elsewhere
    """
    import fiftyone_blip

    samples = load_samples(dataset, view_name)
    summary = fiftyone_blip.caption(samples, num_workers=workers, progress=not quiet, **options)
    click.echo(str(summary))


@main.command()
@click.argument("dataset")
@click.option("--json", "as_json", is_flag=True, help="Print the records as JSON lines.")
def runs(dataset, as_json):
    """List the runs recorded on DATASET, oldest first."""
    import json

    import fiftyone_blip

    records = fiftyone_blip.runs(load_samples(dataset))
    if as_json:
        for record in records:
            click.echo(json.dumps(record, default=str))
        return
    if not records:
        click.echo(f"no runs recorded on {dataset!r}")
        return
    for r in records:
        started = r["started"].strftime("%Y-%m-%d %H:%M:%S")
        shard = f" shard {r['shard']}" if r.get("shard") else ""
        click.echo(
            f"{started}  {r['capability']:<8} {r['field']:<16} {r['status']:<9} "
            f"done {r['done']} failed {r['failed']} skipped {r['skipped']} of {r['total']}{shard}  "
            f"model {r['model']} ({r['dtype']})  settings {r['fingerprint']}"
        )


@main.command()
@click.argument("name", default="shapes-demo")
@click.option("-n", "--count", type=int, default=200, show_default=True)
@click.option("--split", type=click.Choice(["train", "validation", "test"]), default="test", show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--overwrite", is_flag=True, help="Rebuild the dataset if it exists.")
@translate_errors
def shapes(name, count, split, seed, overwrite):
    """Build a FiftyOne dataset NAME of synthetic shapes images with ground truth."""
    import fiftyone_blip

    dataset = fiftyone_blip.load_shapes_dataset(name, count=count, split=split, seed=seed, overwrite=overwrite)
    click.echo(f"dataset {dataset.name!r}: {len(dataset)} samples")


@main.group()
def plugin():
    """Manage the FiftyOne App plugin."""


@plugin.command("install")
@click.option("--plugins-dir", default=None, help="[default: FiftyOne's plugins_dir]")
@translate_errors
def plugin_install(plugins_dir):
    """Link the plugin into FiftyOne's plugins folder so the App finds its operators."""
    from fiftyone_blip import plugin as plugin_module

    target = plugin_module.install(plugins_dir)
    click.echo(f"plugin installed at {target}")


@main.command()
@click.option("-n", "--count", type=int, default=500, show_default=True)
@click.option("--name", default="shapes-demo", show_default=True)
@translate_errors
def demo(count, name):
    """Build the shapes demo dataset, install the plugin and caption it with shapes-tiny."""
    from fiftyone_blip import demo as demo_module

    demo_module.run(name=name, count=count, echo=click.echo)


@main.command()
@click.argument("dataset")
@click.option(
    "-m",
    "--model",
    envvar="FIFTYONE_BLIP_MATCH_MODEL",
    default=None,
    help="BlipForImageTextRetrieval hub id, local directory or 'shapes-tiny'. [default: Salesforce/blip-itm-base-coco]",
)
@click.option("-f", "--field", default="blip_embedding", show_default=True, help="Field to write the embeddings to.")
@click.option(
    "-b", "--brain-key", default="blip_sim", show_default=True, help="Similarity index to build (the App finds it)."
)
@click.option("--no-index", is_flag=True, help="Only embed; build no similarity index.")
@click.option(
    "--backend",
    default=None,
    help="Similarity backend: FiftyOne's default (sklearn) or e.g. lancedb. [default: FiftyOne's default]",
)
@click.option(
    "--resize",
    type=click.Choice(["squash", "center-crop", "letterbox"]),
    default="squash",
    show_default=True,
    help="How images reach the model's square input.",
)
@click.option("--batch-size", type=int, default=16, show_default=True)
@click.option(
    "--device",
    type=click.Choice(["auto", "cpu", "cuda", "mps"]),
    default="auto",
    envvar="FIFTYONE_BLIP_DEVICE",
    show_default=True,
)
@click.option(
    "--dtype",
    type=click.Choice(["auto", "float32", "bfloat16", "float16", "int8"]),
    default="auto",
    show_default=True,
    help="auto: float32 on CPU, bfloat16 on GPUs; int8: dynamic quantization, fastest on CPU.",
)
@click.option(
    "--workers", type=int, default=None, help="Decode threads, 0 for inline. [default: one per core, at most 8]"
)
@click.option("--shard", default=None, help="Embed only shard I of N, as I/N (no index is built for a shard).")
@click.option("--view", "view_name", default=None, help="A saved view of the dataset to embed.")
@click.option("--overwrite", is_flag=True, help="Recompute embeddings that already exist.")
@click.option("-q", "--quiet", is_flag=True, help="No progress bar.")
@translate_errors
def embed(dataset, view_name, workers, quiet, no_index, **options):
    """Embed every image of DATASET with BLIP (ITC) and build a similarity index.

    Writes FIELD (a unit vector per image), FIELD_error and FIELD_run, then
    builds the similarity index BRAIN_KEY over the embedded samples. Text
    search then works from Python (`dataset.sort_by_similarity("a red
    circle", brain_key=...)`), from `fiftyone-blip search` and in the App,
    in any later session. Re-running resumes and rebuilds the index.

    \b
    Examples:
        fiftyone-blip embed my-dataset
        fiftyone-blip embed my-dataset -m shapes-tiny -b shapes_sim
        fiftyone-blip embed my-dataset --backend lancedb
        fiftyone-blip embed my-dataset --shard 0/2 -q   # and 1/2 elsewhere; then once without --shard
    """
    import fiftyone_blip

    samples = load_samples(dataset, view_name)
    if no_index:
        options["brain_key"] = None
    summary = fiftyone_blip.embed(samples, num_workers=workers, progress=not quiet, **options)
    click.echo(str(summary))
    if options["brain_key"] and not options["shard"]:
        click.echo(f"similarity index {options['brain_key']!r} ready")


@main.command()
@click.argument("dataset")
@click.argument("query")
@click.option("-k", "--top-k", "k", type=int, default=20, show_default=True, help="How many results.")
@click.option("-b", "--brain-key", default="blip_sim", show_default=True, help="The index built by `embed`.")
@click.option("--rerank", is_flag=True, help="Re-score the ITC shortlist with BLIP's ITM head.")
@click.option(
    "--shortlist", type=int, default=None, help="How many ITC results --rerank re-scores. [default: max(4k, 50)]"
)
@click.option("-m", "--model", default=None, help="Refuse an index built with another model than this one.")
@click.option(
    "--device",
    type=click.Choice(["auto", "cpu", "cuda", "mps"]),
    default="auto",
    envvar="FIFTYONE_BLIP_DEVICE",
    show_default=True,
)
@click.option("--view", "view_name", default=None, help="Search only this saved view of the dataset.")
@click.option("--json", "as_json", is_flag=True, help="Print the results as JSON lines.")
@translate_errors
def search(dataset, query, view_name, as_json, **options):
    """Find the images of DATASET that best match QUERY (a text, or a sample id).

    Prints one line per result, best first: sample id, file path and score
    (the ITC cosine; with --rerank, the ITM match logit + ITC cosine, then the
    ITM match probability).

    \b
    Examples:
        fiftyone-blip search my-dataset "a dog on a beach" -k 20
        fiftyone-blip search my-dataset "a red circle" -k 10 --rerank
        fiftyone-blip search my-dataset 6b09bc470f665e4981dccd5f -k 5   # more like this sample
    """
    import dataclasses
    import json

    import fiftyone_blip

    samples = load_samples(dataset, view_name)
    hits = fiftyone_blip.search(samples, query, **options)
    for hit in hits:
        click.echo(json.dumps(dataclasses.asdict(hit)) if as_json else str(hit))


if __name__ == "__main__":
    sys.exit(main())
