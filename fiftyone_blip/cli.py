"""The `fiftyone-blip` command line.

Each command is a thin wrapper over one SDK function; library errors become
one-line click errors. Heavy imports happen inside commands, so `--help` is fast.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import sys

import click

from fiftyone_blip import (  # light: no torch, no FiftyOne at import
    AdapterJobSettings,
    AdapterTrainingSettings,
    CapFiltSettings,
    CaptionEvalSettings,
    CaptionSettings,
    EmbedSettings,
    HeatmapSettings,
    MislabelSettings,
    RunOptions,
    SearchSettings,
    VqaSettings,
)
from fiftyone_blip.mislabels import FlagSettings


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


# Names a "not found" error lists at most: a shared database can hold thousands of datasets.
LISTED_NAMES = 5


def some_names(names: list[str]) -> str:
    """At most `LISTED_NAMES` names, then how many more ("a, b, c, d, e and 12 more"), or "none"."""
    shown = ", ".join(names[:LISTED_NAMES]) or "none"
    more = len(names) - LISTED_NAMES
    return f"{shown} and {more} more" if more > 0 else shown


class OneLineErrors(click.Group):
    """The command group: every command under it, nested groups included, ends a library error
    as a one-line click error (`translate_errors`), whether or not it is decorated itself."""

    def invoke(self, ctx):
        return translate_errors(super().invoke)(ctx)


def load_samples(dataset_name: str, view_name: str | None = None, patches_field: str | None = None):
    """The dataset, its saved view, and with `patches_field` their patches view of that label field."""
    samples = _load_view(dataset_name, view_name)
    if patches_field is None:
        return samples
    if samples.get_field(patches_field) is None:
        raise click.ClickException(f"dataset {dataset_name!r} has no label field {patches_field!r} (--patches)")
    try:
        return samples.to_patches(patches_field)
    except ValueError as error:
        raise click.ClickException(f"--patches {patches_field}: {str(error).splitlines()[0]}") from None


def _load_view(dataset_name: str, view_name: str | None = None):
    import fiftyone as fo

    if not fo.dataset_exists(dataset_name):
        names = some_names(fo.list_datasets())
        raise click.ClickException(f"dataset {dataset_name!r} not found (datasets: {names})")
    dataset = fo.load_dataset(dataset_name)
    if view_name is None:
        return dataset
    if not dataset.has_saved_view(view_name):
        names = some_names(dataset.list_saved_views())
        raise click.ClickException(f"dataset {dataset_name!r} has no saved view {view_name!r} (views: {names})")
    return dataset.load_saved_view(view_name)


def _click_type(field, choices):
    if choices:
        return click.Choice([str(c) for c in choices])
    kind = str(field.type).split("|")[0].strip()
    return {"int": int, "float": float}.get(kind, str)


def setting_option(cls, field):
    """One click option from a settings field: its flags, default, choices, envvar and help."""
    meta = field.metadata
    default = cls.run_defaults.get(field.name, cls.defaults()[field.name])
    flags = list(meta.get("cli_flags") or ())
    if not any(flag.startswith("--") for flag in flags):
        flags.append("--" + field.name.replace("_", "-"))
    text = meta.get("help", "")
    help_text = meta.get("cli_help") or text[:1].upper() + text[1:] + "."
    if default is True:  # a setting that is on by default: its flag switches it off
        return click.option(*flags, field.name, flag_value=False, default=True, help=help_text)
    if default is False:
        return click.option(*flags, field.name, is_flag=True, default=False, help=help_text)
    return click.option(
        *flags,
        field.name,
        type=_click_type(field, meta.get("choices")),
        default=default,
        show_default=default is not None,
        envvar=meta.get("envvar"),
        help=help_text,
    )


def settings_options(*classes, skip=()):
    """The click options of every CLI field of `classes` (RunOptions with the first class's run defaults)."""
    options = []
    for cls in classes:
        owner = classes[0]
        for field in cls.fields("cli"):
            if field.name not in skip:
                options.append(setting_option(_with_run_defaults(cls, owner), field))

    def decorate(command):
        for option in reversed(options):
            command = option(command)
        return command

    return decorate


def _with_run_defaults(cls, owner):
    if cls is not RunOptions or not owner.run_defaults:
        return cls
    return type("RunOptions", (RunOptions,), {"run_defaults": owner.run_defaults})


VIEW_OPTION = click.option("--view", "saved_view", default=None, help="A saved view of the dataset.")
PATCHES_OPTION = click.option(
    "--patches",
    "patches_field",
    default=None,
    metavar="FIELD",
    help="Run on the objects of this Detections field (its patches view): each box's crop goes through the "
    "model and the results become attributes of its label (e.g. FIELD.detections.caption).",
)


# ---- summaries: what a command prints, as text or JSON, and its exit code

# The exit status of a run whose samples failed: no sample has a result, or any failed with
# --fail-on-error (1 stays for errors before any work, 2 for bad usage).
EXIT_SAMPLES_FAILED = 3


@dataclasses.dataclass
class Summary:
    """What a command reports: `lines` for people, `data` for --json, and the engine run
    (an `engine.RunSummary`, or None) whose counts set the exit status."""

    lines: list[str]
    data: dict
    run: object = None


def run_data(run) -> dict:
    """An engine run's counts and times for JSON."""
    return dataclasses.asdict(run)


def prints_summary(function=None, *, runs_samples=True):
    """Gives a command --json (and, where it runs over samples, --fail-on-error); the command returns a
    `Summary`, printed here.

    The exit status is EXIT_SAMPLES_FAILED when samples failed and none has a
    result (e.g. "0 done, 3 failed"; samples skipped as already done have one,
    so re-running over a dataset with one unreadable file gives the same status
    as the first run did), or, with --fail-on-error, when any sample failed.
    """
    if function is None:
        return functools.partial(prints_summary, runs_samples=runs_samples)
    fail_option = click.option(
        "--fail-on-error",
        is_flag=True,
        help=f"Exit with status {EXIT_SAMPLES_FAILED} if any sample failed (without it: only if no sample has a result).",
    )

    @click.option("--json", "as_json", is_flag=True, help="Print the summary as one JSON object.")
    @functools.wraps(function)
    def wrapper(*args, as_json, fail_on_error=False, **kwargs):
        if kwargs.get("progress") is False or kwargs.get("quiet"):  # -q: no loading bars either
            from fiftyone_blip.models import quiet_loading

            with quiet_loading():
                summary = function(*args, **kwargs)
        else:
            summary = function(*args, **kwargs)
        if as_json:
            click.echo(json.dumps(summary.data, default=str, ensure_ascii=False))
        else:
            for line in summary.lines:
                click.echo(line)
        run = summary.run
        if run is not None and run.failed and (fail_on_error or not run.done + run.skipped):
            why = "--fail-on-error" if run.done + run.skipped else "no sample has a result"
            click.echo(
                f"Error: {run.failed} of {run.done + run.failed} samples failed ({why}); "
                f"their causes are in field '{run.field}_error'",
                err=True,
            )
            click.get_current_context().exit(EXIT_SAMPLES_FAILED)

    return fail_option(wrapper) if runs_samples else wrapper


@click.group(cls=OneLineErrors)
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
@settings_options(CaptionSettings, RunOptions)
@VIEW_OPTION
@PATCHES_OPTION
@prints_summary
@translate_errors
def caption(dataset, saved_view, patches_field, **values):
    """Caption every image of DATASET into a string field.

    Writes FIELD, FIELD_confidence, FIELD_error and FIELD_run. Samples already
    captioned by the same model and settings are skipped, so re-running an
    interrupted command finishes the rest.

    \b
    Examples:
        fiftyone-blip caption my-dataset
        fiftyone-blip caption my-dataset -s beam --num-beams 5 --max-new-tokens 40
        fiftyone-blip caption my-dataset -s sample --top-p 0.9 --seed 1 -f caption_sampled
        fiftyone-blip caption my-dataset -p "a picture of" --resize letterbox
        fiftyone-blip caption my-dataset --shard 0/2   # and --shard 1/2 elsewhere
        fiftyone-blip caption my-dataset --language de -f caption_de
        fiftyone-blip caption my-dataset -s beam --num-beams 5 --num-captions 5   # and FIELD_candidates
        fiftyone-blip caption my-dataset --patches ground_truth --context 1.5   # one caption per object
    """
    import fiftyone_blip

    run = fiftyone_blip.caption(load_samples(dataset, saved_view, patches_field), **values)
    return Summary([str(run)], {"dataset": dataset, **run_data(run)}, run)


@main.command("capfilt")
@click.argument("dataset")
@click.argument("caption_field")
@click.option("-o", "--out-field", default="capfilt", show_default=True, help="The field the kept caption goes to.")
@settings_options(CapFiltSettings, RunOptions)
@VIEW_OPTION
@prints_summary
@translate_errors
def capfilt_command(dataset, caption_field, out_field, saved_view, **values):
    """Clean the captions in CAPTION_FIELD of DATASET with BLIP's CapFilt.

    Per image, its caption(s) and --num-candidates sampled synthetic captions
    are scored by ITM; an original below --threshold is replaced by a
    synthetic caption that matches better. Writes OUT_FIELD (the kept
    caption), OUT_FIELD_itm, _origin, _original_itm, _gain, _rejected and
    _candidates; CAPTION_FIELD is never changed. Samples whose original was
    rejected are tagged and saved as a review view, largest gain first.

    \b
    Examples:
        fiftyone-blip capfilt my-dataset caption -o caption_clean
        fiftyone-blip capfilt shapes-demo noisy_caption -m shapes-tiny --match-model shapes-tiny
    """
    import fiftyone_blip

    result = fiftyone_blip.capfilt(load_samples(dataset, saved_view), caption_field, out_field, **values)
    run = result.pop("run")
    flagged = (
        f"rejected the original caption of {result['flagged_samples']} of {result['total_samples']} samples; "
        f"tag {result['tag']!r}, review view {result['view']!r}"
    )
    return Summary([str(run), flagged], {"dataset": dataset, **run_data(run), **result}, run)


@main.command("evaluate-captions")
@click.argument("dataset")
@click.argument("pred_field")
@click.argument("gt_field")
@click.option("--eval-key", default="eval", show_default=True, help="The prefix of the fields written.")
@settings_options(CaptionEvalSettings, RunOptions)
@VIEW_OPTION
@prints_summary
@translate_errors
def evaluate_captions_command(dataset, pred_field, gt_field, eval_key, saved_view, **values):
    """Score the captions in PRED_FIELD of DATASET against the references in GT_FIELD.

    BLEU-1..4, ROUGE-L and CIDEr-D (COCO caption toolkit definitions) per
    sample into EVAL_KEY_bleu1 .. EVAL_KEY_cider, and BLIP's reference-free
    ITM probability into EVAL_KEY_itm; prints the corpus figures (also kept
    in the run record). Either field may hold a string, a list of strings or
    Classification(s) labels. Delete it with `delete-caption-evaluation`.

    \b
    Examples:
        fiftyone-blip evaluate-captions my-dataset caption gt_caption --eval-key eval
        fiftyone-blip evaluate-captions shapes-demo caption gt_caption -m shapes-tiny
        fiftyone-blip evaluate-captions my-dataset caption references --no-itm
    """
    import fiftyone_blip
    from fiftyone_blip.caption_metrics import METRIC_NAMES

    result = fiftyone_blip.evaluate_captions(
        load_samples(dataset, saved_view), pred_field, gt_field, eval_key, **values
    )
    run = result.pop("run")
    names = {**METRIC_NAMES, "itm": "ITM"}
    figures = ", ".join(f"{names[k]} {v:.4f}" for k, v in result["corpus"].items() if v is not None)
    lines = [str(run), f"{result['samples']} samples scored: {figures}; review view {result['view']!r}"]
    return Summary(lines, {"dataset": dataset, **run_data(run), **result}, run)


@main.command("delete-caption-evaluation")
@click.argument("dataset")
@click.argument("eval_key")
@prints_summary(runs_samples=False)
@translate_errors
def delete_caption_evaluation_command(dataset, eval_key):
    """Delete the caption evaluation EVAL_KEY of DATASET: its fields, run record and review view."""
    import fiftyone_blip

    deleted = fiftyone_blip.delete_caption_evaluation(load_samples(dataset), eval_key)
    return Summary([f"deleted {len(deleted)} fields: {', '.join(deleted)}"], {"dataset": dataset, "deleted": deleted})


@main.command()
@click.argument("dataset")
@click.argument("questions", nargs=-1, required=True)
@click.option(
    "-f",
    "--field",
    "fields",
    multiple=True,
    help="The field of a question's answers; once per question, in order. [default: made from the question]",
)
@click.option(
    "-a",
    "--answers",
    "answers",
    multiple=True,
    help="Candidate answers, comma-separated (e.g. 'yes,no'): the answer is the most likely one. Once for "
    "all questions, or once per question ('' for free generation). [default: free generation]",
)
@click.option("--boolean", is_flag=True, help="Yes/no questions: store a bool (True for yes) and FIELD_confidence.")
@settings_options(VqaSettings, RunOptions)
@VIEW_OPTION
@PATCHES_OPTION
@prints_summary
@translate_errors
def ask(dataset, questions, fields, answers, boolean, saved_view, patches_field, **values):
    """Ask every image of DATASET one or more QUESTIONS; each answer goes into its own field.

    A question's FIELD holds a Classification (label: the normalised answer,
    confidence: its probability), so the App's sidebar filters by answer;
    with --boolean a bool and FIELD_confidence. The first question's field
    also names FIELD_error and FIELD_run. Samples answered by the same model,
    questions and answers are skipped, so re-running resumes.

    \b
    Examples:
        fiftyone-blip ask my-dataset "how many people are there?" -f people
        fiftyone-blip ask my-dataset "is it night?" -f night --answers yes,no --boolean
        fiftyone-blip ask my-dataset "what colour is the car?" -f car --answers red,blue,white,black
        fiftyone-blip ask shapes-demo "how many shapes are there?" "is there a star?" -f n -f star -m shapes-tiny
        fiftyone-blip ask shapes-demo "what colour is it?" -f colour -m shapes-tiny --patches gt_objects
    """
    import fiftyone_blip
    from fiftyone_blip import vqa

    if not fields:
        fields = tuple(vqa.default_field(q) for q in questions)
    if len(fields) != len(questions):
        raise click.ClickException(f"`--field` must be given once per question ({len(questions)}), got {len(fields)}")
    if len(answers) not in (0, 1, len(questions)):
        raise click.ClickException(
            f"`--answers` must be given once for all questions or once per question ({len(questions)}), "
            f"got {len(answers)}"
        )
    if not answers:
        parsed = None
    elif len(answers) == 1:
        parsed = [vqa.parse_answers(answers[0])] * len(questions)
    else:
        parsed = [vqa.parse_answers(a) for a in answers]
    samples = load_samples(dataset, saved_view, patches_field)
    run = fiftyone_blip.ask(samples, list(questions), list(fields), answers=parsed, boolean=boolean, **values)
    return Summary([str(run)], {"dataset": dataset, "fields": list(fields), **run_data(run)}, run)


class _ListByDefault(click.Group):
    """A group whose first argument, when it names no subcommand, goes to `list` (`runs DATASET`)."""

    def parse_args(self, ctx, args):
        if args and args[0] not in self.commands and args[0] not in ctx.help_option_names:
            args = ["list", *args]
        return super().parse_args(ctx, args)


@main.group(cls=_ListByDefault)
def runs():
    """List the runs recorded on a dataset (`runs DATASET`), or delete one (`runs delete DATASET KEY`)."""


@runs.command("list")
@click.argument("dataset")
@click.option("--json", "as_json", is_flag=True, help="Print the records as JSON lines.")
def runs_list(dataset, as_json):
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
            f"{started}  {r['run_key']:<28} {r['status']:<9} "
            f"done {r['done']} failed {r['failed']} skipped {r['skipped']} of {r['total']}{shard}  "
            f"model {r['model']} ({r['dtype']})  settings {r['fingerprint']}"
        )


@runs.command("delete")
@click.argument("dataset")
@click.argument("key")
@click.option("--dry-run", is_flag=True, help="List what would be deleted; delete nothing.")
@click.option("-y", "--yes", is_flag=True, help="Delete without asking.")
@prints_summary(runs_samples=False)
@translate_errors
def runs_delete(dataset, key, dry_run, yes):
    """Delete the run KEY of DATASET: its fields, its record, the map files it owns and its index.

    KEY is a run key as `fiftyone-blip runs DATASET` shows it (blip_CAPABILITY_FIELD).
    Only what the run wrote goes: the fields whose info names this run, map
    files under the maps folder it recorded that no other run refers to, and
    the similarity index `embed` built over its embeddings. Refused while a
    run writes those fields.

    \b
    Examples:
        fiftyone-blip runs delete my-dataset blip_caption_caption --dry-run
        fiftyone-blip runs delete my-dataset blip_heatmaps_heatmap --yes
    """
    import fiftyone_blip

    samples = load_samples(dataset)
    plan = fiftyone_blip.delete_run(samples, key, dry_run=True)
    if not dry_run:
        if not yes:
            for line in plan.lines()[:-1]:
                click.echo(line, err=True)
            click.confirm(f"Delete run {key!r} of dataset {dataset!r}?", abort=True, err=True)
        plan = fiftyone_blip.delete_run(samples, key)
    return Summary(plan.lines(), dataclasses.asdict(plan))


@main.command()
@click.argument("name", default="shapes-demo")
@click.option("-n", "--count", type=int, default=200, show_default=True)
@click.option("--split", type=click.Choice(["train", "validation", "test"]), default="test", show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--overwrite", is_flag=True, help="Rebuild the dataset if this command built it (any other is refused).")
@prints_summary(runs_samples=False)
@translate_errors
def shapes(name, count, split, seed, overwrite):
    """Build a FiftyOne dataset NAME of synthetic shapes images with ground truth."""
    import fiftyone_blip

    dataset = fiftyone_blip.load_shapes_dataset(name, count=count, split=split, seed=seed, overwrite=overwrite)
    return Summary(
        [f"dataset {dataset.name!r}: {len(dataset)} samples"], {"dataset": dataset.name, "samples": len(dataset)}
    )


@main.group()
def plugin():
    """Manage the FiftyOne App plugin."""


@plugin.command("install")
@click.option("--plugins-dir", default=None, help="[default: FiftyOne's plugins_dir]")
@prints_summary(runs_samples=False)
@translate_errors
def plugin_install(plugins_dir):
    """Link the plugin into FiftyOne's plugins folder so the App finds its operators."""
    from fiftyone_blip import plugin as plugin_module

    target = plugin_module.install(plugins_dir)
    return Summary([f"plugin installed at {target}"], {"path": str(target)})


@main.command()
@click.option("-n", "--count", type=int, default=500, show_default=True)
@click.option("--name", default="shapes-demo", show_default=True)
@translate_errors
def demo(count, name):
    """Build the shapes demo dataset, install the plugin and caption it with shapes-tiny.

    A demo dataset built earlier is reused as it is (its runs and views stay).
    """
    from fiftyone_blip import demo as demo_module

    demo_module.run(name=name, count=count, echo=click.echo)


@main.command("app")
@click.argument("dataset")
@click.option("--port", type=int, default=5151, show_default=True, help="The App's port.")
@click.option("--address", default="localhost", show_default=True, help="The address the App listens on.")
@click.option(
    "--no-launcher", is_flag=True, help="Start no delegated launcher (run `fiftyone delegated launch` yourself)."
)
def app_command(dataset, port, address, no_launcher):
    """Open DATASET in the FiftyOne App, with "Schedule" in the operators' menus and a launcher for it.

    Sets FIFTYONE_ALLOW_LEGACY_ORCHESTRATORS=true for the App server (without
    it the App offers no "Schedule") and starts `fiftyone delegated launch`
    beside it, which runs the scheduled operations one at a time. See their
    state with `fiftyone delegated list`. Ctrl-C stops both.

    \b
    Examples:
        fiftyone-blip app shapes-demo
        fiftyone-blip app my-dataset --port 5152 --no-launcher
    """
    import os
    import subprocess
    from pathlib import Path

    os.environ["FIFTYONE_ALLOW_LEGACY_ORCHESTRATORS"] = "true"
    import fiftyone as fo

    samples = load_samples(dataset)
    launcher = None
    if not no_launcher:
        fiftyone_cli = Path(sys.executable).with_name("fiftyone")
        command = [str(fiftyone_cli)] if fiftyone_cli.exists() else ["fiftyone"]
        launcher = subprocess.Popen([*command, "delegated", "launch"], env=dict(os.environ))
        click.echo(f"delegated launcher started (pid {launcher.pid}); `fiftyone delegated list` shows its runs")
    try:
        session = fo.launch_app(samples, port=port, address=address, auto=False)
        click.echo(f"App: {session.url}  (Ctrl-C stops the App and the launcher)")
        session.wait(-1)
    except KeyboardInterrupt:
        pass
    finally:
        if launcher is not None and launcher.poll() is None:
            launcher.terminate()
            launcher.wait(timeout=30)


# ---- heatmaps: where the model looked, per caption word ----


@main.command("heatmaps")
@click.argument("dataset")
@settings_options(HeatmapSettings, RunOptions)
@click.option("--generate", is_flag=True, help="cross-attention: caption each image first and explain that caption.")
@VIEW_OPTION
@prints_summary
@translate_errors
def heatmaps_command(dataset, saved_view, generate, **values):
    """Compute where BLIP looked for each caption word of DATASET's images.

    Writes FIELD (a heatmap of the whole caption, shown over the image in the
    App), FIELD_words, FIELD_maps (one map per word) or FIELD_word_maps (with
    --maps-dir: one heatmap PNG per word), FIELD_text, FIELD_probs (cross-attention) or FIELD_match
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

    if generate:
        values["text_field"] = None
    run = fiftyone_blip.heatmaps(load_samples(dataset, saved_view), **values)
    return Summary([str(run)], {"dataset": dataset, **run_data(run)}, run)


@main.command("heatmap-overlays")
@click.argument("dataset")
@click.argument("output_dir")
@click.option("--sample-id", default=None, help="The sample to draw. [default: the first one with heatmaps]")
@click.option("-f", "--field", default="heatmap", show_default=True, help="The heatmap field.")
@click.option("--alpha", type=float, default=0.5, show_default=True, help="Opacity of the map over the image.")
@prints_summary(runs_samples=False)
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
    text = sample[f"{field}_text"]
    return Summary(
        [f"{len(paths)} overlays of sample {sample.id} ({text!r}) written to {output_dir}"],
        {"dataset": dataset, "sample_id": sample.id, "text": text, "paths": [str(p) for p in paths]},
    )


@main.command()
@click.argument("dataset")
@click.option("--label-field", required=True, help="Classification, Classifications, Detections or text field.")
@settings_options(MislabelSettings, RunOptions)
@click.option("--rescore/--flag-only", default=True, help="--flag-only re-flags stored scores without a model.")
@VIEW_OPTION
@PATCHES_OPTION
@prints_summary
@translate_errors
def mislabels(dataset, label_field, rescore, saved_view, patches_field, **values):
    """Flag likely mislabels in LABEL_FIELD of DATASET by image-text matching.

    Scores every label (classification, detection crop, or free-text caption)
    with BLIP's ITM head, stores the scores, tags the most suspicious samples
    and saves a review view sorted most suspicious first. --flag-only re-flags
    from stored scores with another threshold, without a model.

    \b
    Examples:
        fiftyone-blip mislabels my-dataset --label-field ground_truth --top-k 100
        fiftyone-blip mislabels my-dataset --label-field ground_truth --template "a photo of a {label}" --percentile 95
        fiftyone-blip mislabels my-dataset --label-field detections --level label --threshold 0.7
        fiftyone-blip mislabels my-dataset --label-field caption --itc            # caption self-check
        fiftyone-blip mislabels my-dataset --label-field ground_truth --flag-only --top-k 20
        fiftyone-blip mislabels my-dataset --label-field detections --patches detections --view to-check
    """
    import fiftyone_blip

    samples = load_samples(dataset, saved_view, patches_field)
    if patches_field is not None and not rescore:
        raise click.ClickException("--patches scores the objects of a view: it does not go with --flag-only")
    if rescore:
        result = fiftyone_blip.find_mislabels(samples, label_field, **values)
    else:
        flag_values = {k: v for k, v in values.items() if k in FlagSettings.names()}
        result = fiftyone_blip.flag_mislabels(samples, label_field, **flag_values)
    run = result.pop("run", None)
    labels = f", {result['flagged_labels']} labels" if result.get("flagged_labels") is not None else ""
    flagged = (
        f"flagged {result['flagged_samples']} of {result['scored_samples']} scored samples{labels} "
        f"(method {result['method']}); tag {result['tag']!r}, field {result['flag_field']!r}, "
        f"review view {result['view']!r}"
    )
    if result.get("suggested_labels"):
        flagged += (
            f"; {result['suggested_labels']} flagged labels have a suggested class ({result['suggested_field']!r}): "
            f"fiftyone-blip labels apply {dataset} --label-field {label_field}"
        )
    lines = [str(run), flagged] if run is not None else [flagged]
    return Summary(lines, {"dataset": dataset, **(run_data(run) if run else {}), **result}, run)


@main.group()
def labels():
    """Act on label QA: apply the suggested classes, undo them, or clear the flag tag.

    `fiftyone-blip mislabels` stores, for class labels, the class BLIP matches
    best (the suggested label) beside the scores. These commands act on the
    flagged labels of DATASET (or of a saved view, e.g. the review view).

    \b
    Examples:
        fiftyone-blip labels apply my-dataset --label-field ground_truth --view ground-truth-match-review
        fiftyone-blip labels undo my-dataset --label-field ground_truth
        fiftyone-blip labels clear my-dataset --label-field ground_truth --view ground-truth-match-review
    """


def _labels_options(command):
    for option in reversed(
        [
            click.argument("dataset"),
            click.option("--label-field", required=True, help="The class-label field that was scored."),
            click.option("-f", "--field", default=None, help="Where the scores are (default: LABEL_FIELD_match)."),
            VIEW_OPTION,
            prints_summary(runs_samples=False),
            translate_errors,
        ]
    ):
        command = option(command)
    return command


@labels.command("apply")
@_labels_options
def labels_apply(dataset, label_field, field, saved_view):
    """Give the flagged labels of DATASET their suggested class; the old class stays on each label.

    A label edited since it was scored is left as it is (and counted).
    """
    import fiftyone_blip
    from fiftyone_blip import label_fixes

    result = fiftyone_blip.apply_suggestions(load_samples(dataset, saved_view), label_field, field)
    return Summary([label_fixes.summary("apply", result)], {"dataset": dataset, **result})


@labels.command("undo")
@_labels_options
def labels_undo(dataset, label_field, field, saved_view):
    """Restore the labels of DATASET that `labels apply` changed, exactly as they were."""
    import fiftyone_blip
    from fiftyone_blip import label_fixes

    result = fiftyone_blip.undo_suggestions(load_samples(dataset, saved_view), label_field, field)
    return Summary([label_fixes.summary("undo", result)], {"dataset": dataset, **result})


@labels.command("clear")
@_labels_options
def labels_clear(dataset, label_field, field, saved_view):
    """Remove the flag tag from the flagged samples (and labels) of DATASET; scores and flags stay."""
    import fiftyone_blip
    from fiftyone_blip import label_fixes

    result = fiftyone_blip.clear_flags(load_samples(dataset, saved_view), label_field, field)
    return Summary([label_fixes.summary("clear", result)], {"dataset": dataset, **result})


@main.command()
@click.argument("dataset")
@settings_options(EmbedSettings, RunOptions)
@click.option("--no-index", is_flag=True, help="Only embed; build no similarity index.")
@VIEW_OPTION
@PATCHES_OPTION
@prints_summary
@translate_errors
def embed(dataset, saved_view, patches_field, no_index, **values):
    """Embed every image of DATASET with BLIP (ITC) and build a similarity index.

    Writes FIELD (a unit vector per image), FIELD_error and FIELD_run, then
    builds the similarity index BRAIN_KEY over the embedded samples. Text
    search then works from Python (`dataset.sort_by_similarity("a red
    circle", brain_key=...)`), from `fiftyone-blip search` and in the App,
    in any later session; with the default backend (blip) a text query is
    re-ranked by BLIP's ITM head there too. Re-running resumes and rebuilds
    the index.

    \b
    Examples:
        fiftyone-blip embed my-dataset
        fiftyone-blip embed my-dataset -m shapes-tiny -b shapes_sim
        fiftyone-blip embed my-dataset --backend sklearn   # FiftyOne's own index: ITC only
        fiftyone-blip embed my-dataset --backend lancedb
        fiftyone-blip embed my-dataset --shard 0/2 -q   # and 1/2 elsewhere; then once without --shard
        fiftyone-blip embed my-dataset --patches ground_truth -b object_sim   # an index of the objects
    """
    import fiftyone_blip

    if no_index:
        values["brain_key"] = None
    run = fiftyone_blip.embed(load_samples(dataset, saved_view, patches_field), **values)
    index = values["brain_key"] if values["brain_key"] and not values["shard"] else None
    lines = [str(run)] + ([f"similarity index {index!r} ready"] if index else [])
    return Summary(lines, {"dataset": dataset, **run_data(run), "brain_key": index}, run)


@main.command()
@click.argument("dataset")
@click.argument("query")
@settings_options(SearchSettings)
@click.option("--view", "saved_view", default=None, help="Search only this saved view of the dataset.")
@click.option("--json", "as_json", is_flag=True, help="Print the results as JSON lines.")
@click.option("-q", "--quiet", is_flag=True, help="No model loading bars.")
@translate_errors
def search(dataset, query, saved_view, as_json, quiet, **values):
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

    from fiftyone_blip import embeddings

    # the hits themselves (the SDK's `search` gives them as a view): each line shows its scores
    from fiftyone_blip.models import quiet_loading

    settings = SearchSettings.resolve(None, None, values, run_options=False)
    with quiet_loading() if quiet else contextlib.nullcontext():
        hits = embeddings.search(load_samples(dataset, saved_view), query, **settings.as_dict())
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
@VIEW_OPTION
@settings_options(AdapterJobSettings, AdapterTrainingSettings)
@click.option("-q", "--quiet", is_flag=True, help="No progress bar.")
@prints_summary(runs_samples=False)
@translate_errors
def adapters_train(dataset_name, saved_view, quiet, **values):
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

    samples = load_samples(dataset_name, saved_view) if dataset_name else None
    # epoch lines go to stderr, beside the progress bar: stdout holds the summary alone
    manifest = fiftyone_blip.train_adapter(
        samples=samples, progress=not quiet, log=lambda line: click.echo(line, err=True), **values
    )
    metrics, parameters = manifest["metrics"], manifest["parameters"]
    line = (
        f"adapter {manifest['language']!r} saved to {manifest['path']}: held-out exact match "
        f"{metrics['held_out_exact_match']:.4f}, {parameters['trainable']:,} parameters "
        f"({parameters['ratio']:.2%} of the base model), {manifest['training']['wall_seconds']:.0f} s wall, "
        f"{manifest['training']['cpu_seconds']:.0f} s CPU"
    )
    return Summary([line], manifest)


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
