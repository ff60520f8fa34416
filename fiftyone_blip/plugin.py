"""Installing the FiftyOne App plugin.

The plugin is the `operators/` folder of the repository; a wheel ships the same
files as `fiftyone_blip/plugin_files/`.
"""

from __future__ import annotations

import os
from pathlib import Path

PLUGIN_NAME = "@fiftyone-blip/blip"
_HERE = Path(__file__).resolve().parent
# Installed from a wheel: the copy inside the package; from a clone: the repository's folder.
PLUGIN_DIRS = (_HERE / "plugin_files", _HERE.parent / "operators")


def plugin_dir() -> Path:
    """The folder holding the plugin's fiftyone.yml."""
    for folder in PLUGIN_DIRS:
        if (folder / "fiftyone.yml").is_file():
            return folder
    raise ValueError(f"plugin files not found in {' or '.join(map(str, PLUGIN_DIRS))}: reinstall fiftyone-blip")


def install(plugins_dir: str | os.PathLike | None = None) -> Path:
    """Links the plugin folder into FiftyOne's plugins folder; returns the link.

    FiftyOne follows symlinks when it looks for plugins, so the App always runs
    the code of this installation.
    """
    import fiftyone as fo

    source = plugin_dir()
    root = Path(plugins_dir or fo.config.plugins_dir).expanduser()
    root.mkdir(parents=True, exist_ok=True)
    link = root / "fiftyone-blip"
    if link.is_symlink() or link.exists():
        if link.resolve() == source:
            return link
        if not link.is_symlink():
            raise ValueError(f"{link} exists and is not a link to this plugin; remove it first")
        link.unlink()
    link.symlink_to(source, target_is_directory=True)
    return link
