"""Photo-like JPEG files for the speed benchmarks (written here, nothing downloaded).

A camera photo decodes at a speed set by its entropy: flat synthetic scenes
decode faster than photos and pure noise much slower. These images mix a smooth
random field (sky, walls), a few soft-edged blobs (objects) and sensor-like
grain, saved at quality 90: about 80-120 kB at 640x480, like a phone photo
scaled to VGA.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter


def photo_like(index: int, width: int = 640, height: int = 480) -> Image.Image:
    """Image number `index`: the same arguments give the same pixels."""
    rng = np.random.default_rng(index)
    coarse = rng.integers(0, 256, size=(6, 8, 3), dtype=np.uint8)
    image = Image.fromarray(coarse).resize((width, height), Image.Resampling.BICUBIC)
    draw = ImageDraw.Draw(image)
    for _ in range(int(rng.integers(3, 8))):
        x, y = rng.integers(0, width), rng.integers(0, height)
        r = int(rng.integers(20, min(width, height) // 3))
        draw.ellipse((x - r, y - r, x + r, y + r), fill=tuple(int(v) for v in rng.integers(0, 256, 3)))
    image = image.filter(ImageFilter.GaussianBlur(1.5))
    grain = rng.normal(0.0, 6.0, size=(height, width, 3))
    pixels = np.clip(np.asarray(image, dtype=np.float32) + grain, 0, 255).astype(np.uint8)
    return Image.fromarray(pixels)


def write_jpegs(folder, count: int, width: int = 640, height: int = 480, quality: int = 90) -> list[str]:
    """Writes `count` photo-like JPEGs into `folder` (kept if already there); returns their paths."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        path = folder / f"{width}x{height}-{i:06d}.jpg"
        if not path.exists():
            photo_like(i, width, height).save(path, quality=quality)
        paths.append(str(path))
    return paths
