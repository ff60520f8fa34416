"""Scheduling from the App, as the README documents it: "Schedule", a `fiftyone delegated launch`
beside the App, the run's status in `fiftyone delegated list`, its results in the App."""

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

NAME = "caption_samples"
LABEL = "BLIP: caption samples"


def _fiftyone(*args, **kwargs):
    """The `fiftyone` command of this environment, with this checkout's package importable."""
    command = Path(sys.executable).with_name("fiftyone")
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    return [str(command), *args], env


@pytest.fixture
def launcher(tmp_path):
    """`fiftyone delegated launch`, as `fiftyone-blip app` starts it beside the App."""
    command, env = _fiftyone("delegated", "launch")
    log = open(tmp_path / "launcher.log", "wb")  # noqa: SIM115 (closed below)
    process = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)
    yield process
    process.terminate()
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=30)
    log.close()


def delegated_info(dataset: str) -> str:
    """What `fiftyone delegated info ID` shows of the dataset's one run of the plugin (its result too)."""
    _, listed = delegated_states(dataset)
    ids = [line.split()[0] for line in listed.splitlines() if f"@fiftyone-blip/blip/{NAME}" in line]
    command, env = _fiftyone("delegated", "info", ids[0])
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=120, check=True).stdout


def delegated_states(dataset: str) -> tuple[list[str], str]:
    """The states `fiftyone delegated list --dataset DATASET` shows for the plugin's runs, and its output."""
    command, env = _fiftyone("delegated", "list", "--dataset", dataset)
    listed = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120, check=True).stdout
    # columns: id, label, operator, dataset, queued_at (date and time), state, completed_at
    states = [line.split()[6] for line in listed.splitlines() if f"@fiftyone-blip/blip/{NAME}" in line]
    return states, listed


def test_a_scheduled_run_completes_and_its_status_is_listed(app, app_dataset, launcher):
    dataset = app_dataset("app-schedule", count=6)
    app.open("app-schedule")
    form = app.open_operator(NAME, LABEL)
    # the form says what scheduling needs
    app.expect(form.get_by_text(re.compile(r"fiftyone-blip app DATASET"))).to_be_visible()

    # the execute button's menu offers "Schedule" (the server allows it, as `fiftyone-blip app` does)
    execute = app.execute_button()
    app.expect(execute).to_be_enabled()
    app.page.locator('[aria-label="split button"] button[aria-haspopup="menu"]').click()
    menu = app.page.locator("#split-button-menu")
    app.expect(menu.get_by_text("NOT AVAILABLE")).to_have_count(0)
    menu.get_by_text("Schedule", exact=True).click()
    schedule = app.page.get_by_role("button", name="Schedule", exact=True)
    app.expect(schedule).to_be_enabled()
    app.screenshot("caption-form-schedule")
    schedule.click()

    # the launcher runs it; `fiftyone delegated list` shows it completed
    deadline = time.monotonic() + 240
    seen = set()
    while True:
        states, listed = delegated_states("app-schedule")
        assert len(states) == 1, listed
        seen.add(states[0])
        if states[0] == "completed":
            break
        assert states[0] in ("queued", "running"), listed
        assert launcher.poll() is None, "the delegated launcher exited"
        assert time.monotonic() < deadline, listed
        time.sleep(1)
    print(f"scheduled run: states seen {sorted(seen)}\n{listed}")
    dataset.reload()
    assert "caption" in dataset.get_field_schema(), listed
    assert dataset.count("caption") == 6

    # the run's outcome is its operation's result: `fiftyone delegated info` shows the summary
    info = delegated_info("app-schedule")
    assert re.search(r"BLIP captions: 6 done, 0 failed, 0 skipped of 6", info), info
    assert re.search(r"'failed': 0|\"failed\": 0", info), info

    # the App shows the results once the dataset is opened again
    app.page.keyboard.press("Escape")
    app.open("app-schedule")
    app.sidebar_field("caption").wait_for()
    app.screenshot("caption-scheduled-done")
