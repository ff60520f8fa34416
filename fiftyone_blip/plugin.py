"""Installing the FiftyOne App plugin (the `operators/` folder of this repository)."""

from __future__ import annotations

import os
from pathlib import Path

PLUGIN_NAME = "@fiftyone-blip/blip"
PLUGIN_DIR = Path(__file__).resolve().parent.parent / "operators"


def install(plugins_dir: str | os.PathLike | None = None) -> Path:
    """Links the plugin folder into FiftyOne's plugins folder; returns the link.

    FiftyOne follows symlinks when it looks for plugins, so the App always runs
    the code of this checkout.
    """
    import fiftyone as fo

    if not (PLUGIN_DIR / "fiftyone.yml").exists():
        raise ValueError(f"plugin files not found at {PLUGIN_DIR}: install fiftyone-blip from a clone")
    root = Path(plugins_dir or fo.config.plugins_dir).expanduser()
    root.mkdir(parents=True, exist_ok=True)
    link = root / "fiftyone-blip"
    if link.is_symlink() or link.exists():
        if link.resolve() == PLUGIN_DIR:
            return link
        if not link.is_symlink():
            raise ValueError(f"{link} exists and is not a link to this plugin; remove it first")
        link.unlink()
    link.symlink_to(PLUGIN_DIR, target_is_directory=True)
    return link
