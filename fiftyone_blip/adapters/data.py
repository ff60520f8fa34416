"""Training data: (image path, caption) pairs from a dataset or from a folder and a captions file."""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

from fiftyone_blip.adapters.registry import AdapterError


def pairs_from_dataset(samples, caption_field: str) -> list[tuple[str, str]]:
    """(filepath, caption) pairs of the samples whose `caption_field` holds a non-empty string."""
    if not samples.has_field(caption_field):
        raise AdapterError(f"the samples have no field {caption_field!r}")
    paths, texts = samples.values(["filepath", caption_field])
    return [(p, t.strip()) for p, t in zip(paths, texts) if isinstance(t, str) and t.strip()]


_IMAGE_KEYS = ("image", "filepath", "file", "filename", "path")


def pairs_from_folder(images_dir: str | os.PathLike, captions_file: str | os.PathLike) -> list[tuple[str, str]]:
    """(filepath, caption) pairs from a folder of images and a CSV or JSONL file of captions.

    Each row names an image (column or key `image`, `filepath`, `file`,
    `filename` or `path`; relative to `images_dir`) and its `caption`.
    """
    images_dir, captions_file = Path(images_dir), Path(captions_file)
    if not images_dir.is_dir():
        raise AdapterError(f"images folder {str(images_dir)!r} does not exist")
    if not captions_file.is_file():
        raise AdapterError(f"captions file {str(captions_file)!r} does not exist")
    if captions_file.suffix.lower() == ".csv":
        with captions_file.open(newline="", encoding="utf-8") as handle:
            rows = list(csv.DictReader(handle))
    elif captions_file.suffix.lower() in (".jsonl", ".ndjson"):
        rows = []
        for number, line in enumerate(captions_file.read_text(encoding="utf-8").splitlines(), 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as error:
                    raise AdapterError(f"{str(captions_file)!r} line {number}: {error}") from None
    else:
        raise AdapterError(f"captions file must be .csv or .jsonl, got {str(captions_file)!r}")
    pairs = []
    for number, row in enumerate(rows, 1):
        key = next((k for k in _IMAGE_KEYS if row.get(k)), None)
        caption = row.get("caption")
        if key is None or not isinstance(caption, str) or not caption.strip():
            raise AdapterError(
                f"{str(captions_file)!r} row {number} needs an image ({'/'.join(_IMAGE_KEYS)}) and a caption"
            )
        path = (images_dir / row[key]).resolve()
        if not path.is_file():
            raise AdapterError(f"{str(captions_file)!r} row {number}: image {str(path)!r} does not exist")
        pairs.append((str(path), caption.strip()))
    return pairs
