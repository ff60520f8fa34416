"""Decoding any image file into the model's square input.

Files come in every size and mode (RGBA, palette, grayscale, 16-bit, CMYK,
EXIF-rotated). `load_image` turns each into upright 8-bit RGB; `fit_image`
brings it to the model's size by one of three resize modes:

- "squash": stretch to a square (BLIP's own preprocessing);
- "center-crop": scale the short side, crop the middle (the model sees part);
- "letterbox": scale the long side, pad the rest (the model sees it all).

`Geometry` records where the original image lies in the model's square, so
that maps over the model input (heatmaps) can be mapped back onto the image.

`Preprocessor.pixels` gives the fitted image as uint8 (what decode threads
produce); `to_pixel_values` is the one place where a batch of them becomes the
model's normalised float input, on the model's device.
"""

from __future__ import annotations

import dataclasses
import os
import stat
import threading
import warnings

import numpy as np
from PIL import Image, ImageOps

from fiftyone_blip.settings import RESIZE_MODES

# Above this many pixels a file is treated as a decompression bomb and refused,
# from its header alone, before anything is decoded. Pillow's own hard limit
# (2 x Image.MAX_IMAGE_PIXELS, about 179 megapixels by default) still applies above it.
MAX_PIXELS = 100_000_000
# `warnings.catch_warnings` swaps the process-wide filter list: entered from several
# decode threads at once it can leave a filter behind or drop one. Header parsing is
# fast, so the threads take turns for it; decoding itself runs in parallel.
_OPEN_LOCK = threading.Lock()


class ImageDecodeError(ValueError):
    """A file is missing, empty, truncated or not an image."""


@dataclasses.dataclass(frozen=True)
class Geometry:
    """Where the original image (width x height) lies in the model's size x size input.

    The original pixel (x, y) appears at (x * scale_x + offset_x, y * scale_y + offset_y).
    """

    width: int
    height: int
    size: int
    scale_x: float
    scale_y: float
    offset_x: float
    offset_y: float


def load_image(path: str, min_size: int | None = None) -> Image.Image:
    """Opens an image file as upright 8-bit RGB.

    Animated GIFs and multi-page TIFFs give their first frame. Files over
    `MAX_PIXELS` are refused from their header, and anything that is not a
    regular file (a named pipe would block forever) is refused unopened.

    With `min_size`, a large JPEG decodes at a reduced scale (libjpeg's 1/2,
    1/4 or 1/8) that still leaves both sides at least `min_size` pixels:
    several times faster, but not the same pixels after resizing as a full
    decode (BENCHMARKS.md, "Fast JPEG decoding"). None decodes every pixel.

    Raises:
        ImageDecodeError: with a one-line reason a user can act on.
    """
    try:
        _check_regular_file(path)
        with _OPEN_LOCK, warnings.catch_warnings():
            # Pillow warns above its own soft limit; MAX_PIXELS below is the limit here.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(path)
        if image.width * image.height > MAX_PIXELS:
            image.close()
            raise ImageDecodeError(
                f"image too large ({image.width}x{image.height} pixels, limit {MAX_PIXELS:,}): "
                "refused as a possible decompression bomb"
            )
        if min_size and image.format == "JPEG":
            image.draft(image.mode, (min_size, min_size))
        image.load()
    except FileNotFoundError:
        raise ImageDecodeError("file not found") from None
    except IsADirectoryError:
        raise ImageDecodeError("path is a directory") from None
    except PermissionError:
        raise ImageDecodeError("permission denied") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
        raise ImageDecodeError(f"image too large: {error}") from None
    except Image.UnidentifiedImageError:
        if _is_empty(path):
            raise ImageDecodeError("not an image: empty file (0 bytes)") from None
        raise ImageDecodeError("not an image (unrecognised file format)") from None
    except ImageDecodeError:
        raise
    except (OSError, SyntaxError, ValueError) as error:
        raise ImageDecodeError(f"cannot decode image: {str(error).splitlines()[0]}") from None
    return to_rgb(image)


def _check_regular_file(path) -> None:
    """Refuses what is not a regular file before opening it: reading a named pipe blocks forever."""
    if not isinstance(path, (str, os.PathLike)):
        return  # a file object: nothing to check
    mode = os.stat(path).st_mode
    if stat.S_ISDIR(mode):
        raise IsADirectoryError(path)
    if not stat.S_ISREG(mode):
        raise ImageDecodeError("not a regular file (a named pipe, socket or device)")


def _is_empty(path) -> bool:
    try:
        return os.path.getsize(path) == 0
    except (OSError, TypeError):
        return False


def to_rgb(image: Image.Image) -> Image.Image:
    """Upright 8-bit RGB from any PIL mode; transparency is composited over white."""
    image = ImageOps.exif_transpose(image)
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        array = np.asarray(image, dtype=np.float64)
        high = array.max() or 1.0
        image = Image.fromarray(np.rint(array * (255.0 / high)).astype(np.uint8), mode="L")
    elif image.mode == "F":
        array = np.asarray(image, dtype=np.float64)
        low, high = array.min(), array.max()
        image = Image.fromarray(np.rint((array - low) * (255.0 / ((high - low) or 1.0))).astype(np.uint8), mode="L")
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, rgba)
    return image.convert("RGB") if image.mode != "RGB" else image


def check_resize(mode: str) -> str:
    """A resize mode is one of `RESIZE_MODES`."""
    if mode not in RESIZE_MODES:
        raise ValueError(f"`resize` must be one of {RESIZE_MODES}, got {mode!r}")
    return mode


def fit_image(
    image: Image.Image, size: int, mode: str = "squash", fill: tuple[int, int, int] = (124, 116, 104)
) -> tuple[Image.Image, Geometry]:
    """Resizes an RGB image to size x size by `mode`; returns it and its geometry.

    `fill` is the letterbox padding colour (default: the BLIP normalisation mean,
    which becomes zero after normalising).
    """
    check_resize(mode)
    width, height = image.size
    resample = Image.Resampling.BICUBIC
    if mode == "squash":
        fitted = image.resize((size, size), resample)
        return fitted, Geometry(width, height, size, size / width, size / height, 0.0, 0.0)
    if mode == "center-crop":
        scale = size / min(width, height)
        new_w, new_h = max(size, round(width * scale)), max(size, round(height * scale))
        resized = image.resize((new_w, new_h), resample)
        left, top = (new_w - size) // 2, (new_h - size) // 2
        fitted = resized.crop((left, top, left + size, top + size))
        return fitted, Geometry(width, height, size, new_w / width, new_h / height, -left, -top)
    scale = size / max(width, height)
    new_w, new_h = max(1, round(width * scale)), max(1, round(height * scale))
    resized = image.resize((new_w, new_h), resample)
    fitted = Image.new("RGB", (size, size), fill)
    left, top = (size - new_w) // 2, (size - new_h) // 2
    fitted.paste(resized, (left, top))
    return fitted, Geometry(width, height, size, new_w / width, new_h / height, left, top)


class Preprocessor:
    """Turns a file path into the model's input; safe to call from worker threads.

    Built from a BLIP image processor so that "squash" matches the processor's
    own output. `fast_decode` decodes large JPEGs at a reduced scale (see
    `load_image`): faster, but no longer the processor's pixels. Two outputs:

    - `pixels(path)`: the fitted image as a uint8 (size, size, 3) array, the
      cheap form for decode threads (4x smaller than floats, no float work on
      the CPU); `to_pixel_values(arrays, device, dtype)` turns a list of them
      into the model's normalised batch on the model's device.
    - `__call__(path)` / `from_image(image)`: the normalised (3, size, size)
      float32 array itself, computed here on the CPU (the same values).
    """

    def __init__(self, image_processor, size: int, mode: str = "squash", fast_decode: bool = False):
        check_resize(mode)
        self.size = size
        self.mode = mode
        self.fast_decode = fast_decode
        self.mean = tuple(float(m) for m in image_processor.image_mean)
        self.std = tuple(float(s) for s in image_processor.image_std)
        mean = np.asarray(self.mean, dtype=np.float32)
        std = np.asarray(self.std, dtype=np.float32)
        self.scale = (1.0 / 255.0) / std  # folds rescale and std into one multiply
        self.shift = mean / std
        self.fill = tuple(int(round(m * 255)) for m in self.mean)

    def __call__(self, path: str) -> tuple[np.ndarray, Geometry]:
        return self._normalise(*self.pixels(path))

    def from_image(self, image: Image.Image) -> tuple[np.ndarray, Geometry]:
        return self._normalise(*self.pixels_from_image(image))

    def pixels(self, path: str) -> tuple[np.ndarray, Geometry]:
        """Decodes and fits a file: a uint8 (size, size, 3) RGB array and its geometry."""
        image = load_image(path, min_size=self.size if self.fast_decode else None)
        return self.pixels_from_image(image, upright=True)

    def pixels_from_image(self, image: Image.Image, upright: bool = False) -> tuple[np.ndarray, Geometry]:
        """Fits a PIL image: a uint8 (size, size, 3) RGB array and its geometry.

        `upright`: the image is already 8-bit RGB with EXIF orientation applied
        (as `load_image` returns it), so `to_rgb` is skipped.
        """
        if not upright:
            image = to_rgb(image)
        fitted, geometry = fit_image(image, self.size, self.mode, self.fill)
        return np.asarray(fitted), geometry

    def to_pixel_values(self, arrays, device="cpu", dtype=None):
        """A list of `pixels` arrays -> the model's normalised (N, 3, size, size) tensor on `device`."""
        return to_pixel_values(arrays, device, dtype, self.mean, self.std)

    def _normalise(self, pixels: np.ndarray, geometry: Geometry) -> tuple[np.ndarray, Geometry]:
        array = pixels.astype(np.float32) * self.scale - self.shift
        return np.ascontiguousarray(array.transpose(2, 0, 1)), geometry


def to_pixel_values(arrays, device="cpu", dtype=None, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5)):
    """Stacks uint8 HxWx3 images into the model's normalised (N, 3, H, W) tensor on `device`.

    The one place where pixels become floats. Only uint8 crosses to the device
    (a quarter of the bytes of float32); the rescale, the mean/std normalisation
    and the cast to `dtype` run there. On CUDA the batch is stacked straight into
    page-locked (pinned) host memory and copied without blocking the host, so
    the next batch can be decoded while this one is in flight.

    Args:
        arrays: a list of (H, W, 3) uint8 arrays of one size, or an (N, H, W, 3)
            uint8 array or tensor.
        device: the model's device ("cpu").
        dtype: the model's floating dtype, a torch dtype or its name (None:
            float32); normalisation itself
            always runs in float32, as BLIP's image processor does.
        mean: per-channel mean on the 0..1 scale (0.5 each).
        std: per-channel standard deviation on the 0..1 scale (0.5 each).

    Returns:
        a contiguous (N, 3, H, W) tensor of `dtype` on `device`.
    """
    import torch

    device = torch.device(device)
    if isinstance(arrays, torch.Tensor):
        batch = arrays
    else:
        if isinstance(arrays, np.ndarray):
            arrays = list(arrays) if arrays.ndim == 4 else [arrays]
        if not arrays:
            raise ValueError("`arrays` must hold at least one image, got none")
        first = np.asarray(arrays[0])
        if first.dtype != np.uint8 or first.ndim != 3 or first.shape[2] != 3:
            raise ValueError(f"`arrays` must be (H, W, 3) uint8 images, got {first.dtype} {first.shape}")
        pinned = device.type == "cuda"
        batch = torch.empty((len(arrays), *first.shape), dtype=torch.uint8, pin_memory=pinned)
        np.stack(arrays, out=batch.numpy())
    if batch.dtype != torch.uint8 or batch.ndim != 4 or batch.shape[3] != 3:
        raise ValueError(f"`arrays` must be (N, H, W, 3) uint8, got {batch.dtype} {tuple(batch.shape)}")
    batch = batch.to(device, non_blocking=batch.is_pinned())
    # x / 255 then (x - mean) / std, folded into one multiply-add as in `Preprocessor`.
    std_t = torch.tensor(std, dtype=torch.float32, device=device)
    scale = (1.0 / 255.0) / std_t
    shift = torch.tensor(mean, dtype=torch.float32, device=device) / std_t
    pixels = torch.addcmul(-shift.view(1, 3, 1, 1), batch.permute(0, 3, 1, 2).float(), scale.view(1, 3, 1, 1))
    dtype = getattr(torch, dtype) if isinstance(dtype, str) else dtype
    if dtype is not None and dtype != torch.float32:
        pixels = pixels.to(dtype)
    return pixels.contiguous()
