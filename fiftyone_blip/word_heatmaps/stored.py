"""Reading and drawing stored word heatmaps: a sample's words and maps, overlays, the panel's view of one word."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from fiftyone_blip.word_heatmaps.computing import writable_folder

# ---------------------------------------------------------------- reading stored maps


def word_maps(sample, field: str = "heatmap") -> tuple[list[str], np.ndarray, list[float] | None]:
    """A sample's stored words, their maps (words, height, width; uint8) and probabilities (or None)."""
    words = sample.get_field(f"{field}_words") if sample.has_field(f"{field}_words") else None
    if not words:
        raise ValueError(f"sample {sample.id} has no heatmaps in field {field!r}")
    maps = sample.get_field(f"{field}_maps") if sample.has_field(f"{field}_maps") else None
    paths = None
    if maps is None and sample.has_field(f"{field}_word_maps") and sample.get_field(f"{field}_word_maps"):
        paths = [heatmap.map_path for heatmap in sample.get_field(f"{field}_word_maps")]
    elif maps is None and sample.has_field(f"{field}_map_paths") and sample.get_field(f"{field}_map_paths"):
        paths = sample.get_field(f"{field}_map_paths")  # written before maps were Heatmaps
    if paths is not None:
        from PIL import Image

        maps = np.stack([np.asarray(Image.open(p).convert("L")) for p in paths])
    if maps is None:
        raise ValueError(f"sample {sample.id} has words but no maps in field {field!r}")
    probs = sample.get_field(f"{field}_probs") if sample.has_field(f"{field}_probs") else None
    return list(words), np.asarray(maps), probs


def heatmap_fields(dataset) -> list[str]:
    """The fields of a dataset that hold heatmaps with per-word maps."""
    import fiftyone as fo

    schema = dataset.get_field_schema()
    return [
        name
        for name, kind in schema.items()
        if isinstance(kind, fo.EmbeddedDocumentField) and kind.document_type is fo.Heatmap and f"{name}_words" in schema
    ]


def overlay(image, map2d: np.ndarray, alpha: float = 0.5, colormap: str = "jet"):
    """The image with a map over it (stretched to the image, like the App): an RGB PIL image."""
    import matplotlib
    from PIL import Image

    from fiftyone_blip.images import to_rgb

    image = to_rgb(image)
    stretched = Image.fromarray(np.asarray(map2d, dtype=np.uint8), mode="L").resize(
        image.size, Image.Resampling.BILINEAR
    )
    colours = matplotlib.colormaps[colormap](np.asarray(stretched) / 255.0)[..., :3]
    blended = (1 - alpha) * np.asarray(image, dtype=np.float64) / 255.0 + alpha * colours
    return Image.fromarray(np.rint(blended * 255).astype(np.uint8), mode="RGB")


def colour_scale(colormap: str = "jet", width: int = 256, height: int = 12):
    """The colours `overlay` draws a map in, lowest (left) to highest (right): an RGB PIL image, a legend."""
    import matplotlib
    from PIL import Image

    row = matplotlib.colormaps[colormap](np.linspace(0.0, 1.0, width))[:, :3]
    return Image.fromarray(np.rint(np.repeat(row[None], height, axis=0) * 255).astype(np.uint8), mode="RGB")


def write_overlays(sample, output_dir, field: str = "heatmap", alpha: float = 0.5) -> list[Path]:
    """Writes one PNG per word (and `caption.png`) of a sample's image with the map over it."""
    from PIL import Image

    from fiftyone_blip.images import load_image

    words, maps, _ = word_maps(sample, field)
    image = load_image(sample.filepath)
    output = writable_folder(output_dir, "output_dir")
    written = []
    heatmap = sample.get_field(field)
    if heatmap is not None:
        overall = heatmap.get_map() if hasattr(heatmap, "get_map") else heatmap.map
        if overall is None and heatmap.map_path:
            overall = np.asarray(Image.open(heatmap.map_path).convert("L"))
        if overall is not None:
            target = output / "caption.png"
            overlay(image, overall, alpha).save(target)
            written.append(target)
    for i, (word, word_map) in enumerate(zip(words, maps)):
        target = output / f"{i:03d}-{re.sub(r'[^A-Za-z0-9]+', '_', word)[:40]}.png"
        overlay(image, word_map, alpha).save(target)
        written.append(target)
    return written


def data_url(image) -> str:
    """A PIL image as a PNG data URL, for an image view in an App panel."""
    import base64
    import io

    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


# The most pixels the panel draws an overlay with (1024 x 1024): its work and its data URL are
# bounded whatever the image's shape (a 1000x10 strip scaled to a 384 px short side was 38400x384).
MAX_OVERLAY_PIXELS = 1 << 20


def display_size(width: int, height: int, min_side: int = 384, max_pixels: int = MAX_OVERLAY_PIXELS):
    """(width, height) to draw an image at, aspect kept: small images scaled up towards a `min_side`
    short side, and no more than `max_pixels` in all (large or long images scaled down)."""
    factor = max(1.0, min_side / max(min(width, height), 1))
    if width * height * factor * factor > max_pixels:
        factor = (max_pixels / (width * height)) ** 0.5
    return max(1, int(width * factor)), max(1, int(height * factor))


def word_view(sample, field: str = "heatmap", word_index: int = 0, min_side: int = 384) -> dict:
    """What the App panel shows for one word of a sample: word, probability, overlay (data URL).

    The overlay is drawn at `display_size`: small images scaled up to a `min_side` short side so
    the map can be seen, and at most `MAX_OVERLAY_PIXELS` pixels.
    """
    from PIL import Image

    from fiftyone_blip.images import load_image

    words, maps, probs = word_maps(sample, field)
    index = min(max(int(word_index), 0), len(words) - 1)
    image = load_image(sample.filepath)
    size = display_size(image.width, image.height, min_side)
    if size != image.size:
        image = image.resize(size, Image.Resampling.BICUBIC)
    match = sample.get_field(f"{field}_match") if sample.has_field(f"{field}_match") else None
    return {
        "words": words,
        "index": index,
        "word": words[index],
        "probability": None if probs is None else float(probs[index]),
        "match": None if match is None else float(match),
        "text": sample.get_field(f"{field}_text") if sample.has_field(f"{field}_text") else None,
        "map": maps[index],
        "overlay": data_url(overlay(image, maps[index])),
    }
