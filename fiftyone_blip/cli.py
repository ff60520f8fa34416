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
@click.option("-l", "--label-field", required=True, help="Classification, Classifications, Detections or text field.")
@click.option(
    "-m",
    "--model",
    envvar="FIFTYONE_BLIP_MATCH_MODEL",
    default=None,
    help="ITM model: hub id, local directory or 'shapes-tiny'. [default: Salesforce/blip-itm-base-coco]",
)
@click.option("-f", "--field", default=None, help="Where scores go. [default: LABEL_FIELD_match]")
@click.option(
    "-t",
    "--template",
    default=None,
    help="Label prompt with {label}. [default: 'a photo of a {label}'; shapes-tiny: 'a {label}']",
)
@click.option("--classes", default=None, help="Comma-separated label set for margins. [default: the labels present]")
@click.option("--no-margin", is_flag=True, help="Skip margins against the best other class (one ITM pass per class).")
@click.option("--itc", is_flag=True, help="Also store ITC cosine similarities.")
@click.option("--method", type=click.Choice(["auto", "itm", "itc", "itm+margin"]), default="auto", show_default=True)
@click.option("--threshold", type=float, default=None, help="Flag mistakenness >= this (0..1). [default: 0.5]")
@click.option("--percentile", type=float, default=None, help="Flag mistakenness at or above this percentile.")
@click.option("-k", "--top-k", type=int, default=None, help="Flag the K most suspicious.")
@click.option("--level", type=click.Choice(["sample", "label"]), default="sample", show_default=True)
@click.option("--tag", default="mislabel", show_default=True, help="Tag for flagged samples (and labels).")
@click.option("--view-name", default=None, help="Saved review view. [default: FIELD-review]")
@click.option("--rescore/--flag-only", default=True, help="--flag-only re-flags stored scores without a model.")
@click.option("--crop-padding", type=float, default=None, help="Detections: box growth factor (>= 1).")
@click.option(
    "--resize", type=click.Choice(["squash", "center-crop", "letterbox"]), default="squash", show_default=True
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
    "--dtype", type=click.Choice(["auto", "float32", "bfloat16", "float16", "int8"]), default="auto", show_default=True
)
@click.option("--workers", type=int, default=None, help="Decode threads, 0 for inline.")
@click.option("--shard", default=None, help="Score only shard I of N, as I/N.")
@click.option("--view", "view_name_in", default=None, help="A saved view of the dataset to check.")
@click.option("--overwrite", is_flag=True, help="Rescore samples already scored with these settings.")
@click.option("-q", "--quiet", is_flag=True, help="No progress bar.")
@translate_errors
def mislabels(dataset, label_field, rescore, view_name_in, workers, quiet, classes, no_margin, **options):
    """Flag likely mislabels in LABEL_FIELD of DATASET by image-text matching.

    Scores every label (classification, detection crop, or free-text caption)
    with BLIP's ITM head, stores the scores, tags the most suspicious samples
    and saves a review view sorted most suspicious first. --flag-only re-flags
    from stored scores with another threshold, without a model.

    \b
    Examples:
        fiftyone-blip mislabels my-dataset --label-field ground_truth --top-k 100
        fiftyone-blip mislabels my-dataset -l ground_truth -t "a photo of a {label}" --percentile 95
        fiftyone-blip mislabels my-dataset -l detections --level label --threshold 0.7
        fiftyone-blip mislabels my-dataset -l caption --itc            # caption self-check
        fiftyone-blip mislabels my-dataset -l ground_truth --flag-only --top-k 20
    """
    import fiftyone_blip

    samples = load_samples(dataset, view_name_in)
    flag_options = {k: options[k] for k in ("field", "method", "threshold", "percentile", "top_k", "level", "tag")}
    flag_options["view_name"] = options["view_name"]
    if rescore:
        score_options = {k: v for k, v in options.items() if k not in flag_options}
        result = fiftyone_blip.find_mislabels(
            samples,
            label_field,
            classes=[c.strip() for c in classes.split(",") if c.strip()] if classes is not None else None,
            margin=not no_margin,
            num_workers=workers,
            progress=not quiet,
            **score_options,
            **flag_options,
        )
        click.echo(str(result["run"]))
    else:
        result = fiftyone_blip.flag_mislabels(samples, label_field, **flag_options)
    labels = f", {result['flagged_labels']} labels" if result.get("flagged_labels") is not None else ""
    click.echo(
        f"flagged {result['flagged_samples']} of {result['scored_samples']} scored samples{labels} "
        f"(method {result['method']}); tag {result['tag']!r}, field {result['flag_field']!r}, "
        f"review view {result['view']!r}"
    )


if __name__ == "__main__":
    sys.exit(main())
