"""The CLI through click's CliRunner, against the test database."""

import subprocess
import sys

from click.testing import CliRunner

from fiftyone_blip.cli import main


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
        "-b",
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
    result = invoke("caption", fresh_dataset.name, "-m", "shapes-tiny", "-s", "beam", "-b", "20")
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
