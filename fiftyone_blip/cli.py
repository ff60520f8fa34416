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
        except OSError as error:  # e.g. a disk filling up mid-run: what was done is saved
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


DEVICE_OPTION = click.option(
    "--device",
    type=click.Choice(["auto", "cpu", "cuda", "mps"]),
    default="auto",
    envvar="FIFTYONE_BLIP_DEVICE",
    show_default=True,
)


def engine_options(verb: str, batch_size: int = 16, view_name: str = "view_name", shard_note: str = ""):
    """The options every engine command shares: input size, batching, device, shards, resume, progress.

    `verb` starts the --shard help ("Caption only shard I of N ...").
    """
    options = [
        click.option(
            "--resize",
            type=click.Choice(["squash", "center-crop", "letterbox"]),
            default="squash",
            show_default=True,
            help="How images reach the model's square input.",
        ),
        click.option("--batch-size", type=int, default=batch_size, show_default=True),
        DEVICE_OPTION,
        click.option(
            "--dtype",
            type=click.Choice(["auto", "float32", "bfloat16", "float16", "int8"]),
            default="auto",
            show_default=True,
            help="auto: float32 on CPU, bfloat16 on GPUs; int8: dynamic quantization, fastest on CPU.",
        ),
        click.option(
            "--workers",
            type=int,
            default=None,
            help="Decode threads, 0 for inline. [default: one per core, at most 8]",
        ),
        click.option("--shard", default=None, help=f"{verb} only shard I of N, as I/N (e.g. 0/4).{shard_note}"),
        click.option("--view", view_name, default=None, help="A saved view of the dataset."),
        click.option("--overwrite", is_flag=True, help="Recompute samples already done with these settings."),
        click.option("-q", "--quiet", is_flag=True, help="No progress bar."),
    ]

    def decorate(command):
        for option in reversed(options):
            command = option(command)
        return command

    return decorate


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
@engine_options("Caption")
@click.option(
    "-l",
    "--language",
    default=None,
    help="Caption language: 'en' or an installed adapter's code (see `fiftyone-blip adapters list`). [default: en]",
)
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
        fiftyone-blip caption my-dataset --language de -f caption_de
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


# ---- heatmaps: where the model looked, per caption word ----


@main.command("heatmaps")
@click.argument("dataset")
@click.option(
    "--mode",
    type=click.Choice(["cross-attention", "gradcam"]),
    default="cross-attention",
    show_default=True,
    help="cross-attention: the captioner's decoder; gradcam: gradient x cross-attention of the ITM head.",
)
@click.option(
    "-m",
    "--model",
    default=None,
    help="Hub id, local directory or 'shapes-tiny'. [default: Salesforce's captioning or ITM base model]",
)
@click.option("-f", "--field", default="heatmap", show_default=True, help="Field for the caption heatmap.")
@click.option("--text-field", default="caption", show_default=True, help="Field holding the text to explain.")
@click.option("-t", "--text", default=None, help="One text (e.g. a query) to explain on every image.")
@click.option("--generate", is_flag=True, help="cross-attention: caption each image first and explain that caption.")
@click.option("--layers", default=None, help="'all', 'last' or indices like 0,1. [default: depends on the mode]")
@click.option("--heads", default="all", show_default=True, help="'all' or indices like 0,1.")
@click.option(
    "--token-positions",
    type=click.Choice(["both", "reading", "predicting"]),
    default="both",
    show_default=True,
    help="cross-attention: the decoder steps that read a word, predict it, or both.",
)
@click.option("--normalize-heads", is_flag=True, help="Standardise each head's map before averaging.")
@click.option("--map-size", type=int, default=64, show_default=True, help="Long side of stored maps, pixels.")
@click.option("--maps-dir", default=None, help="Store per-word maps as PNG files here instead of in the samples.")
@engine_options("Explain", batch_size=8)
@translate_errors
def heatmaps_command(dataset, view_name, workers, quiet, generate, text_field, **options):
    """Compute where BLIP looked for each caption word of DATASET's images.

    Writes FIELD (a heatmap of the whole caption, shown over the image in the
    App), FIELD_words, FIELD_maps (one map per word) or FIELD_map_paths (with
    --maps-dir), FIELD_text, FIELD_probs (cross-attention) or FIELD_match
    (gradcam), FIELD_error and FIELD_run. Open a sample in the App and use the
    "BLIP word heatmaps" panel to see each word's map.

    \b
    Examples:
        fiftyone-blip heatmaps my-dataset                      # explains the `caption` field
        fiftyone-blip heatmaps my-dataset --generate -f heatmap_generated
        fiftyone-blip heatmaps my-dataset --mode gradcam -t "a dog on a beach" -f gradcam_dog
        fiftyone-blip heatmaps my-dataset --layers last --heads 0,3 --resize letterbox
        fiftyone-blip heatmaps shapes-demo -m shapes-tiny --heads 0,1 --normalize-heads
    """
    import fiftyone_blip

    samples = load_samples(dataset, view_name)
    summary = fiftyone_blip.heatmaps(
        samples,
        text_field=None if generate else text_field,
        num_workers=workers,
        progress=not quiet,
        **options,
    )
    click.echo(str(summary))


@main.command("heatmap-overlays")
@click.argument("dataset")
@click.argument("output_dir")
@click.option("--sample-id", default=None, help="The sample to draw. [default: the first one with heatmaps]")
@click.option("-f", "--field", default="heatmap", show_default=True, help="The heatmap field.")
@click.option("--alpha", type=float, default=0.5, show_default=True, help="Opacity of the map over the image.")
@translate_errors
def heatmap_overlays(dataset, output_dir, sample_id, field, alpha):
    """Write one sample's per-word heatmap overlays as PNG files into OUTPUT_DIR, for a report.

    One file per caption word (NNN-word.png) and caption.png for the whole caption.

    \b
    Example:
        fiftyone-blip heatmap-overlays my-dataset report/ --sample-id 65a1...
    """
    import fiftyone_blip

    samples = load_samples(dataset)
    if sample_id is None:
        done = samples.exists(f"{field}_words")
        if len(done) == 0:
            raise click.ClickException(f"no sample of {dataset!r} has heatmaps in field {field!r}")
        sample = done.first()
    else:
        try:
            sample = samples[sample_id]
        except (KeyError, ValueError):
            raise click.ClickException(f"dataset {dataset!r} has no sample {sample_id!r}") from None
    paths = fiftyone_blip.write_heatmap_overlays(sample, output_dir, field=field, alpha=alpha)
    click.echo(f"{len(paths)} overlays of sample {sample.id} ({sample[f'{field}_text']!r}) written to {output_dir}")


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
@engine_options("Score", view_name="view_name_in")
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
@engine_options("Embed", shard_note=" No index is built for a shard.")
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
    "--shortlist", type=int, default=None, help="How many ITC results --rerank re-scores. [default: max(4k, 128)]"
)
@click.option("-m", "--model", default=None, help="Refuse an index built with another model than this one.")
@DEVICE_OPTION
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


# --- language adapters --------------------------------------------------------------------------


@main.group()
def adapters():
    """Train and list LoRA language adapters for captions in other languages.

    \b
    Adapters live in the registry folder, one subfolder per language:
    $FIFTYONE_BLIP_ADAPTERS_DIR, or ~/.fiftyone-blip/adapters. German and
    Russian adapters for shapes-tiny come bundled.
    """


@adapters.command("train")
@click.option("-l", "--language", required=True, help="Language code the adapter is installed under, e.g. de.")
@click.option("-d", "--dataset", "dataset_name", default=None, help="A FiftyOne dataset of images and captions.")
@click.option("--view", "view_name", default=None, help="A saved view of the dataset.")
@click.option("-c", "--caption-field", default=None, help="The dataset's caption field, e.g. caption_de.")
@click.option("--images", "images_dir", default=None, help="Or: a folder of images ...")
@click.option("--captions", "captions_file", default=None, help="... with a .csv or .jsonl of image,caption rows.")
@click.option(
    "-m",
    "--model",
    envvar="FIFTYONE_BLIP_CAPTION_MODEL",
    default=None,
    help="Base captioner: hub id, local directory or 'shapes-tiny'. [default: Salesforce/blip-image-captioning-base]",
)
@click.option("-o", "--out", default=None, help="Adapter folder. [default: <registry>/<language>]")
@click.option("--rank", type=int, default=8, show_default=True, help="LoRA rank.")
@click.option("--alpha", type=float, default=16.0, show_default=True, help="LoRA alpha.")
@click.option("--lr", "learning_rate", type=float, default=2e-3, show_default=True, help="Peak learning rate.")
@click.option("--epochs", type=int, default=30, show_default=True, help="Most epochs (early stopping may end sooner).")
@click.option("--batch-size", type=int, default=64, show_default=True)
@click.option("--validation-fraction", type=float, default=0.1, show_default=True, help="Share of pairs held out.")
@click.option("--max-validation", type=int, default=1000, show_default=True, help="Most held-out pairs.")
@click.option("--patience", type=int, default=3, show_default=True, help="Epochs without a better held-out loss.")
@click.option("--max-added-tokens", type=int, default=4000, show_default=True, help="Most new tokens.")
@click.option("--seed", type=int, default=0, show_default=True)
@DEVICE_OPTION
@click.option("--threads", type=int, default=None, help="CPU threads for torch. [default: torch's]")
@click.option("--overwrite", is_flag=True, help="Replace an installed adapter of this language.")
@click.option("-q", "--quiet", is_flag=True, help="No progress bar.")
@translate_errors
def adapters_train(dataset_name, view_name, quiet, **options):
    """Train a LoRA adapter that captions in another language, and install it.

    Only the text decoder adapts (LoRA plus rows for the new tokens its
    language needs); the vision encoder stays frozen. A held-out split gives
    early stopping and the metrics in the adapter's manifest.json.

    \b
    Examples:
        fiftyone-blip adapters train -l de -d my-dataset -c caption_de
        fiftyone-blip adapters train -l ru --images photos/ --captions ru.jsonl
        fiftyone-blip shapes shapes-train -n 10000 --split train
        fiftyone-blip adapters train -l de -d shapes-train -c gt_caption_de -m shapes-tiny
    """
    import fiftyone_blip

    samples = load_samples(dataset_name, view_name) if dataset_name else None
    manifest = fiftyone_blip.train_adapter(samples=samples, progress=not quiet, log=click.echo, **options)
    metrics, parameters = manifest["metrics"], manifest["parameters"]
    click.echo(
        f"adapter {manifest['language']!r} saved to {manifest['path']}: held-out exact match "
        f"{metrics['held_out_exact_match']:.4f}, {parameters['trainable']:,} parameters "
        f"({parameters['ratio']:.2%} of the base model), {manifest['training']['wall_seconds']:.0f} s wall, "
        f"{manifest['training']['cpu_seconds']:.0f} s CPU"
    )


@adapters.command("list")
@click.option("-m", "--model", default=None, help="Only adapters for this base model.")
@click.option("--json", "as_json", is_flag=True, help="Print the manifests as JSON lines.")
def adapters_list(model, as_json):
    """List the installed language adapters (registry first, then bundled)."""
    import json

    import fiftyone_blip
    from fiftyone_blip import adapters as adapters_module

    manifests = fiftyone_blip.list_adapters(model)
    for path, problem in adapters_module.broken_adapters():
        click.echo(f"broken   {path}: {problem}", err=as_json)
    if as_json:
        for manifest in manifests:
            click.echo(json.dumps(manifest, ensure_ascii=False))
        return
    click.echo(f"registry: {adapters_module.registry_dir()}")
    if not manifests:
        click.echo("no adapters installed")
        return
    for m in manifests:
        click.echo(
            f"{m['language']:<8} base {m['base_model']['name']:<40} "
            f"exact match {m['metrics']['held_out_exact_match']:.3f}  "
            f"{m['parameters']['trainable']:,} params ({m['parameters']['ratio']:.2%})  "
            f"{m['data']['train_pairs']} pairs  {m['path']}"
        )


# --- end of language adapters --------------------------------------------------------------------


if __name__ == "__main__":
    sys.exit(main())
