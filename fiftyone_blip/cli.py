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
@click.option(
    "--device",
    type=click.Choice(["auto", "cpu", "cuda", "mps"]),
    default="auto",
    envvar="FIFTYONE_BLIP_DEVICE",
    show_default=True,
)
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
