"""A wheel, installed with no clone around it, ships the App plugin and the bundled models."""

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_a_wheel_ships_the_plugin_and_plugin_install_links_it(tmp_path):
    source = tmp_path / "src"  # a copy, so that the build leaves nothing in the checkout
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(".git", ".venv", "build", "*.egg-info", "__pycache__"))
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    wheel_cmd = pip + ["wheel", "--no-deps", "--no-build-isolation", "-w", str(tmp_path / "dist"), str(source)]
    subprocess.run(wheel_cmd, check=True, timeout=600)
    (wheel,) = (tmp_path / "dist").glob("fiftyone_blip-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    assert {
        "fiftyone_blip/plugin_files/fiftyone.yml",
        "fiftyone_blip/plugin_files/__init__.py",
        "fiftyone_blip/plugin_files/requirements.txt",
        "fiftyone_blip/plugin_files/js/sidebar_groups.js",
        "fiftyone_blip/zoo_source/manifest.json",
        "fiftyone_blip/zoo_source/__init__.py",
        "fiftyone_blip/shapes/models/matcher/model.safetensors",
        "fiftyone_blip/shapes/adapters/de/adapter_model.safetensors",
    } <= names, sorted(names)

    site = tmp_path / "site"
    subprocess.run(pip + ["install", "--no-deps", "--target", str(site), str(wheel)], check=True, timeout=600)
    code = "import sys; from fiftyone_blip import plugin; print(plugin.__file__); print(plugin.install(sys.argv[1]))"
    env = {**os.environ, "PYTHONPATH": str(site)}
    out = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path / "plugins")], env=env, cwd=tmp_path, capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr[-2000:]
    module, link = out.stdout.strip().splitlines()[-2:]
    assert Path(module).is_relative_to(site)  # the wheel's code, not the checkout's
    assert Path(link).resolve() == site / "fiftyone_blip" / "plugin_files"
    assert (Path(link) / "fiftyone.yml").is_file()
