"""The plugin installed the FiftyOne way, in a fresh environment with no network.

    fiftyone plugins download <repository url>
    fiftyone plugins requirements @fiftyone-blip/blip --install

An archive of this checkout's tracked files stands in for GitHub's download of
the repository: a local web server serves it at the repository's archive path,
and FiftyOne downloads the archive URL (its documented alternative to a GitHub
URL). The fresh environment is a real `python -m venv` that sees the test
environment's packages (torch, fiftyone, pip, ...) through a `.pth` file, but
not fiftyone-blip itself, so the operators can only import the package that the
requirements step installs from the archive.
"""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import yaml
from repo_archive import ROOT, serve, tracked_files_archive

PLUGIN = "@fiftyone-blip/blip"
PYPROJECT = (ROOT / "pyproject.toml").read_text()  # tomllib is 3.11+; the package supports 3.10
VERSION = re.search(r'(?m)^version = "([^"]+)"', PYPROJECT).group(1)
REPOSITORY = re.search(r'(?m)^Repository = "([^"]+)"', PYPROJECT).group(1)
LICENSE = re.search(r'(?m)^license = \{ text = "([^"]+)" \}', PYPROJECT).group(1)
FIFTYONE_CLI = "import sys; from fiftyone.core.cli import main; sys.argv[0] = 'fiftyone'; main()"


def test_plugin_metadata_names_license_repository_and_the_package_version():
    import fiftyone_blip

    metadata = yaml.safe_load((ROOT / "operators" / "fiftyone.yml").read_text())
    assert metadata["version"] == VERSION == fiftyone_blip.__version__
    assert metadata["url"] == REPOSITORY and REPOSITORY.startswith("https://github.com/")
    assert metadata["license"] == LICENSE
    lines = [line for line in (ROOT / "operators" / "requirements.txt").read_text().splitlines() if line[:1] not in "#"]
    assert lines == [f"fiftyone-blip @ {REPOSITORY}/archive/refs/tags/v{VERSION}.zip"]


def _fresh_venv(folder: Path) -> Path:
    """A new venv whose site-packages sees this environment's packages except fiftyone-blip."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(folder)], check=True, timeout=120)
    python = folder / "bin" / "python"
    site = Path(
        subprocess.run(
            [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    )
    shared_site = Path(__import__("fiftyone").__file__).resolve().parents[1]
    # A folder of links to every shared entry but fiftyone-blip's (its editable finder and
    # dist-info would make pip think the package is installed already).
    farm = folder.parent / "shared-site-packages"
    farm.mkdir()
    for entry in shared_site.iterdir():
        if re.search(r"fiftyone_blip|fiftyone-blip", entry.name) or entry.suffix == ".pth":
            continue
        (farm / entry.name).symlink_to(entry)
    (site / "shared-packages.pth").write_text(f"{farm}\n")
    return python


def test_download_then_requirements_install_gives_working_operators_offline(tmp_path):
    www = tmp_path / "www"
    archive_path = REPOSITORY.removeprefix("https://github.com") + f"/archive/refs/tags/v{VERSION}.zip"
    tracked_files_archive(www / archive_path.lstrip("/"), prefix=f"fiftyone-blip-{VERSION}")
    with serve(www) as base_url:
        _download_and_install(tmp_path, base_url, archive_path)


def _download_and_install(tmp_path, base_url, archive_path):

    python = _fresh_venv(tmp_path / "venv")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env.update(
        FIFTYONE_PLUGINS_DIR=str(tmp_path / "plugins"),
        PIP_NO_INDEX="1",  # nothing from a package index: dependencies must already be there
        PIP_NO_BUILD_ISOLATION="0",  # pip's inverted switch: build with the environment's setuptools
        PIP_DISABLE_PIP_VERSION_CHECK="1",
        PATH=f"{python.parent}:{env.get('PATH', '')}",
    )

    def run(*args, check=True):
        out = subprocess.run([str(python), *args], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
        if check:
            assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
        return out

    assert run("-c", "import fiftyone_blip", check=False).returncode != 0  # the fresh env lacks the package

    run("-c", FIFTYONE_CLI, "plugins", "download", base_url + archive_path)
    plugin_dir = tmp_path / "plugins" / PLUGIN
    assert (plugin_dir / "fiftyone.yml").is_file() and (plugin_dir / "requirements.txt").is_file()

    # The requirement points at GitHub's archive of the release; offline, the local server stands in.
    requirements = plugin_dir / "requirements.txt"
    text = requirements.read_text()
    assert f"fiftyone-blip @ {REPOSITORY}/archive/refs/tags/v{VERSION}.zip" in text
    requirements.write_text(text.replace("https://github.com", base_url))

    run("-c", FIFTYONE_CLI, "plugins", "requirements", PLUGIN, "--install")

    code = f"""
import json
import fiftyone.operators as foo
import fiftyone_blip
from fiftyone_blip import zoo
assert zoo.model_entries()  # the zoo source ships with the package
uris = sorted(op.uri for op in foo.OperatorRegistry().list_operators() if op.plugin_name == {PLUGIN!r})
print(json.dumps({{"module": fiftyone_blip.__file__, "version": fiftyone_blip.__version__, "uris": uris}}))
"""
    out = json.loads(run("-c", code).stdout.strip().splitlines()[-1])
    assert Path(out["module"]).is_relative_to(tmp_path / "venv")  # installed from the archive, not this checkout
    assert out["version"] == VERSION
    metadata = yaml.safe_load((ROOT / "operators" / "fiftyone.yml").read_text())
    declared = metadata["operators"] + metadata.get("panels", [])
    assert out["uris"] == sorted(f"{PLUGIN}/{name}" for name in declared)
