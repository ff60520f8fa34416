"""The CLI through click's CliRunner, against the test database."""

import json
import subprocess
import sys

from click.testing import CliRunner

from fiftyone_blip.cli import EXIT_SAMPLES_FAILED, main


def invoke(*args):
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def test_caption_then_runs(fresh_dataset):
    result = invoke(
        "caption",
        fresh_dataset.name,
        "--model",
        "shapes-tiny",
        "-s",
        "beam",
        "--num-beams",
        "2",
        "--max-new-tokens",
        "30",
        "--quiet",
    )
    assert result.exit_code == 0, result.output
    assert "48 done, 0 failed, 0 skipped of 48" in result.output
    assert fresh_dataset.count("caption") == 48
    listing = invoke("runs", fresh_dataset.name)
    assert listing.exit_code == 0
    assert "caption" in listing.output and "completed" in listing.output and "done 48" in listing.output
    as_json = invoke("runs", fresh_dataset.name, "--json")
    assert '"strategy": "beam"' in as_json.output


def test_caption_a_saved_view_with_a_shard(fresh_dataset):
    fresh_dataset.save_view("first-ten", fresh_dataset.limit(10))
    result = invoke("caption", fresh_dataset.name, "--view", "first-ten", "-m", "shapes-tiny", "--shard", "0/1", "-q")
    assert result.exit_code == 0, result.output
    assert fresh_dataset.count("caption") == 10


def test_errors_are_one_line(fresh_dataset):
    result = invoke("caption", "no-such-dataset", "-m", "shapes-tiny")
    assert result.exit_code == 1 and "dataset 'no-such-dataset' not found" in result.output
    result = invoke("caption", fresh_dataset.name, "-m", "shapes-tiny", "-s", "beam", "--num-beams", "20")
    assert result.exit_code == 1
    assert result.output.strip() == "Error: `num_beams` must be in 1..10, got 20"
    result = invoke("caption", fresh_dataset.name, "-m", "./missing-model-dir")
    assert result.exit_code == 1 and "does not exist" in result.output
    result = invoke("caption", fresh_dataset.name, "--view", "nope")
    assert result.exit_code == 1 and "no saved view 'nope'" in result.output
    assert "caption" not in fresh_dataset.get_field_schema()


def test_shapes_command(fo):
    result = invoke("shapes", "cli-shapes", "--count", "3")
    assert result.exit_code == 0 and "3 samples" in result.output
    assert len(fo.load_dataset("cli-shapes")) == 3
    fo.delete_dataset("cli-shapes")


def test_help_is_fast_and_imports_no_torch():
    code = (
        "import sys; from click.testing import CliRunner; from fiftyone_blip.cli import main; "
        "r = CliRunner().invoke(main, ['caption', '--help']); "
        "assert r.exit_code == 0 and 'Examples' in r.output, r.output; "
        "assert 'torch' not in sys.modules and 'fiftyone' not in sys.modules, 'heavy import'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_app_command_turns_scheduling_on_and_starts_a_launcher(fresh_dataset, monkeypatch):
    import os

    import fiftyone as fo

    launched, started = [], []

    class Session:
        url = "http://localhost:5151/"

        def wait(self, wait=3):
            launched.append(os.environ.get("FIFTYONE_ALLOW_LEGACY_ORCHESTRATORS"))

    class Launcher:
        pid = 4242

        def __init__(self, command, env):
            started.append((command, env.get("FIFTYONE_ALLOW_LEGACY_ORCHESTRATORS")))

        def poll(self):
            return None

        def terminate(self):
            started.append("terminated")

        def wait(self, timeout=None):
            return 0

    # set here so that the test's end restores the variable the command sets
    monkeypatch.setenv("FIFTYONE_ALLOW_LEGACY_ORCHESTRATORS", "false")
    monkeypatch.setattr(fo, "launch_app", lambda samples, **kwargs: Session())
    monkeypatch.setattr(subprocess, "Popen", Launcher)
    result = invoke("app", fresh_dataset.name)
    assert result.exit_code == 0, result.output
    assert launched == ["true"]
    assert started[0][0][-2:] == ["delegated", "launch"] and started[0][1] == "true"
    assert started[-1] == "terminated"
    assert "fiftyone delegated list" in result.output


# ---------------------------------------------------------------- --json and exit codes


def _break_files(dataset, count):
    """Points the first `count` samples at missing files."""
    ids = dataset.limit(count).values("id")
    dataset.set_values("filepath", {sid: f"/nonexistent/missing-{i}.png" for i, sid in enumerate(ids)}, key_field="id")


def _json(result) -> dict:
    (line,) = result.stdout.strip().splitlines()  # stdout holds the summary alone
    return json.loads(line)


def test_every_summary_command_prints_one_json_object_with_its_counts(fresh_dataset):
    fresh_dataset.save_view("six", fresh_dataset.limit(6))
    name = fresh_dataset.name
    caption = _json(invoke("caption", name, "--view", "six", "-m", "shapes-tiny", "-q", "--json"))
    assert (caption["done"], caption["failed"], caption["skipped"], caption["total"]) == (6, 0, 0, 6)
    assert caption["field"] == "caption" and caption["dataset"] == name and caption["run_id"]

    heatmaps = _json(invoke("heatmaps", name, "--view", "six", "-m", "shapes-tiny", "-q", "--json"))
    assert (heatmaps["done"], heatmaps["field"]) == (6, "heatmap")

    embedded = _json(invoke("embed", name, "--view", "six", "-m", "shapes-tiny", "-q", "--json", "--no-index"))
    assert (embedded["done"], embedded["brain_key"]) == (6, None)

    mislabels = invoke(
        "mislabels", name, "--view", "six", "--label-field", "gt_label", "-m", "shapes-tiny", "-q", "--json"
    )
    found = _json(mislabels)
    assert found["done"] == 6 and found["scored_samples"] == 6 and "flagged_samples" in found
    flagged = _json(
        invoke("mislabels", name, "--view", "six", "--label-field", "gt_label", "--flag-only", "--top-k", "2", "--json")
    )
    assert flagged["flagged_samples"] == 2 and "done" not in flagged

    shapes = _json(invoke("shapes", "cli-json-shapes", "--count", "2", "--json"))
    assert shapes == {"dataset": "cli-json-shapes", "samples": 2}
    import fiftyone as fo

    fo.delete_dataset("cli-json-shapes")


def test_no_sample_succeeded_exits_non_zero_with_the_counts(fresh_dataset):
    fresh_dataset.save_view("three", fresh_dataset.limit(3))
    _break_files(fresh_dataset, 3)
    result = invoke("caption", fresh_dataset.name, "--view", "three", "-m", "shapes-tiny", "-q")
    assert result.exit_code == EXIT_SAMPLES_FAILED
    assert "0 done, 3 failed" in result.stdout
    assert "3 of 3 samples failed (no sample has a result)" in result.stderr and "caption_error" in result.stderr
    as_json = invoke("caption", fresh_dataset.name, "--view", "three", "-m", "shapes-tiny", "-q", "--json")
    assert as_json.exit_code == EXIT_SAMPLES_FAILED
    assert (_json(as_json)["done"], _json(as_json)["failed"]) == (0, 3)
    # beside samples that already hold a result, the same failures keep the first run's status
    fresh_dataset.save_view("six", fresh_dataset.limit(6))
    assert invoke("caption", fresh_dataset.name, "--view", "six", "-m", "shapes-tiny", "-q").exit_code == 0
    rerun = invoke("caption", fresh_dataset.name, "--view", "six", "-m", "shapes-tiny", "-q")
    assert rerun.exit_code == 0 and "0 done, 3 failed, 3 skipped" in rerun.stdout


def test_some_samples_failed_exits_zero_unless_fail_on_error(fresh_dataset):
    fresh_dataset.save_view("six", fresh_dataset.limit(6))
    _break_files(fresh_dataset, 2)
    args = ["caption", fresh_dataset.name, "--view", "six", "-m", "shapes-tiny", "-q"]
    result = invoke(*args, "-f", "lenient")
    assert result.exit_code == 0, result.output
    assert "4 done, 2 failed" in result.stdout
    strict = invoke(*args, "-f", "strict", "--fail-on-error", "--json")
    assert strict.exit_code == EXIT_SAMPLES_FAILED
    assert (_json(strict)["done"], _json(strict)["failed"]) == (4, 2)
    assert "2 of 6 samples failed (--fail-on-error)" in strict.stderr
    assert fresh_dataset.count("strict") == 4  # what succeeded is stored all the same
    # nothing failed: the flag changes nothing
    fresh_dataset.save_view("good", fresh_dataset.skip(2).limit(4))
    good = invoke("caption", fresh_dataset.name, "--view", "good", "-m", "shapes-tiny", "-q", "--fail-on-error")
    assert good.exit_code == 0 and "4 done, 0 failed" in good.stdout


# ---------------------------------------------------------------- small frictions


def _short_flags(command, path=""):
    """(command path, short flag, its first long flag) of every option under `command`."""
    import click

    if isinstance(command, click.Group):
        for name, sub in command.commands.items():
            yield from _short_flags(sub, f"{path} {name}".strip())
        return
    for param in command.params:
        if not isinstance(param, click.Option):
            continue
        flags = [*param.opts, *param.secondary_opts]
        long = next((f for f in flags if f.startswith("--")), None)
        for flag in flags:
            if len(flag) == 2 and flag.startswith("-"):
                yield path, flag, long


# flags whose long names differ by what they name, not by what they mean
SAME_MEANING = {"--caption-model": "--model", "--out-field": "--out"}  # capfilt's captioner; an output


def test_a_short_flag_means_one_thing_in_every_command():
    meanings = {}
    for path, flag, long in _short_flags(main):
        meanings.setdefault(flag, {}).setdefault(SAME_MEANING.get(long, long), []).append(path)
    clashes = {flag: longs for flag, longs in meanings.items() if len(longs) > 1}
    assert not clashes
    assert meanings["-b"] == {"--brain-key": ["embed", "search"]}
    assert set(meanings["-l"]) == {"--language"} and set(meanings["-t"]) == {"--text"}
    assert meanings["-k"] == {"--top-k": ["search"]}


def test_quiet_json_prints_nothing_but_json(fresh_dataset):
    fresh_dataset.save_view("two", fresh_dataset.limit(2))
    cli = [sys.executable, "-m", "fiftyone_blip.cli"]
    done = subprocess.run(
        [*cli, "caption", fresh_dataset.name, "--view", "two", "-m", "shapes-tiny", "-q", "--json"],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["done"] == 2
    assert done.stderr == ""  # no loading bars of transformers
    fb_embed = [*cli, "embed", fresh_dataset.name, "--view", "two", "-m", "shapes-tiny", "-q", "--json"]
    assert subprocess.run(fb_embed, capture_output=True, text=True).stderr == ""
    found = subprocess.run(
        [*cli, "search", fresh_dataset.name, "a red circle", "-k", "1", "-q", "--json"], capture_output=True, text=True
    )
    assert found.returncode == 0 and found.stderr == "", found.stderr
    assert json.loads(found.stdout)["id"] in fresh_dataset.limit(2).values("id")


def test_a_missing_dataset_lists_a_few_names(fo):
    made = [f"cli-few-{i}" for i in range(8)]
    for name in made:
        if not fo.dataset_exists(name):
            fo.Dataset(name)
    try:
        result = invoke("caption", "no-such-dataset")
        assert result.exit_code == 1
        (line,) = result.output.strip().splitlines()
        listed = line.split("(datasets: ")[1].rstrip(")")
        assert len(listed.split(", ")) <= 5 and listed.endswith("more")
    finally:
        for name in made:
            fo.delete_dataset(name)


def test_fail_on_error_is_offered_only_where_samples_can_fail():
    from click.testing import CliRunner

    from fiftyone_blip.cli import main

    def options(*command):
        return CliRunner().invoke(main, [*command, "--help"]).output

    for command in (("caption",), ("ask",), ("embed",), ("mislabels",), ("heatmaps",), ("capfilt",)):
        assert "--fail-on-error" in options(*command), command
    for command in (("runs", "delete"), ("shapes",), ("plugin", "install"), ("adapters", "train")):
        assert "--fail-on-error" not in options(*command), command
