"""Decoding every image mode and the three resize modes, with their geometry."""

import io

import numpy as np
import pytest
from PIL import Image

from fiftyone_blip import images


def save(image, path, **kwargs):
    image.save(path, **kwargs)
    return str(path)


@pytest.mark.parametrize(
    "make",
    [
        lambda: Image.new("RGBA", (30, 20), (255, 0, 0, 128)),
        lambda: Image.new("LA", (30, 20), (100, 50)),
        lambda: Image.new("L", (30, 20), 128),
        lambda: Image.new("1", (30, 20), 1),
        lambda: Image.fromarray(np.arange(600, dtype=np.uint16).reshape(20, 30) * 100),
        lambda: Image.new("CMYK", (30, 20), (0, 255, 255, 0)),
        lambda: Image.new("F", (30, 20), 0.5),
    ],
    ids=["rgba", "la", "gray", "bilevel", "16-bit", "cmyk", "float"],
)
def test_every_mode_becomes_rgb(make):
    image = images.to_rgb(make())
    assert image.mode == "RGB" and image.size == (30, 20)


def test_palette_transparency_composites_over_white(tmp_path):
    palette = Image.new("P", (10, 10), 0)
    palette.putpalette([255, 0, 0] + [0, 0, 0] * 255)
    palette.info["transparency"] = 0
    path = save(palette, tmp_path / "p.png", transparency=0)
    assert images.load_image(path).getpixel((0, 0)) == (255, 255, 255)


def test_cmyk_jpeg_and_16_bit_png_decode(tmp_path):
    cmyk = save(Image.new("CMYK", (40, 30), (0, 255, 255, 0)), tmp_path / "c.jpg")
    red = images.load_image(cmyk).getpixel((5, 5))
    assert red[0] > 200 and red[1] < 60
    gray16 = save(Image.fromarray(np.full((8, 8), 40000, dtype=np.uint16)), tmp_path / "g.png")
    assert images.load_image(gray16).getpixel((0, 0))[0] == 255


def test_exif_orientation_is_applied(tmp_path):
    image = Image.new("RGB", (40, 20), (0, 0, 255))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise when shown
    path = save(image, tmp_path / "r.jpg", exif=exif.tobytes())
    assert images.load_image(path).size == (20, 40)


@pytest.mark.parametrize(
    "content, reason",
    [
        (None, "file not found"),
        (b"", "not an image"),
        (b"\x00\x01garbage" * 50, "not an image"),
    ],
)
def test_bad_files_raise_one_line_reasons(tmp_path, content, reason):
    path = tmp_path / "bad.jpg"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(images.ImageDecodeError, match=reason) as info:
        images.load_image(str(path))
    assert "\n" not in str(info.value)


def test_truncated_jpeg_is_an_error(tmp_path):
    buffer = io.BytesIO()
    Image.effect_noise((200, 200), 50).convert("RGB").save(buffer, "JPEG")
    path = tmp_path / "cut.jpg"
    path.write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    with pytest.raises(images.ImageDecodeError, match="decode"):
        images.load_image(str(path))


def test_decompression_bomb_is_refused(tmp_path, monkeypatch):
    monkeypatch.setattr(images, "MAX_PIXELS", 100 * 100)
    path = save(Image.new("RGB", (200, 200)), tmp_path / "big.png")
    with pytest.raises(images.ImageDecodeError, match="too large"):
        images.load_image(path)


def test_squash_center_crop_and_letterbox_geometry():
    image = Image.new("RGB", (200, 100), (255, 0, 0))
    squash, g = images.fit_image(image, 50, "squash")
    assert squash.size == (50, 50) and (g.scale_x, g.scale_y, g.offset_x, g.offset_y) == (0.25, 0.5, 0, 0)

    crop, g = images.fit_image(image, 50, "center-crop")
    assert crop.size == (50, 50) and g.scale_x == g.scale_y == 0.5 and g.offset_x == -25 and g.offset_y == 0

    box, g = images.fit_image(image, 50, "letterbox", fill=(0, 0, 0))
    assert box.size == (50, 50) and g.scale_x == g.scale_y == 0.25 and (g.offset_x, g.offset_y) == (0, 12)
    pixels = np.asarray(box)
    assert pixels[:12].max() == 0 and pixels[-12:].max() == 0  # padding above and below
    assert (pixels[12:37, :, 0] == 255).all()  # the image in the middle

    with pytest.raises(ValueError, match="resize"):
        images.fit_image(image, 50, "stretch")


def test_squash_matches_the_blip_processor():
    from transformers import BlipProcessor

    from fiftyone_blip.models import BUNDLED

    processor = BlipProcessor.from_pretrained(BUNDLED["shapes-tiny"]["caption"])
    preprocess = images.Preprocessor(processor.image_processor, 96, "squash")
    image = Image.effect_noise((150, 110), 60).convert("RGB")
    ours, _ = preprocess.from_image(image)
    theirs = processor(images=image, return_tensors="np")["pixel_values"][0]
    assert ours.shape == theirs.shape == (3, 96, 96)
    assert np.abs(ours - theirs).max() < 1e-5


def test_named_pipe_is_refused_without_blocking(tmp_path):
    import os

    fifo = tmp_path / "pipe.jpg"
    os.mkfifo(fifo)  # opening it for reading would wait for a writer forever
    with pytest.raises(images.ImageDecodeError, match="not a regular file"):
        images.load_image(str(fifo))
    with pytest.raises(images.ImageDecodeError, match="directory"):
        images.load_image(str(tmp_path))


def test_empty_file_is_named_as_such(tmp_path):
    path = tmp_path / "empty.png"
    path.write_bytes(b"")
    with pytest.raises(images.ImageDecodeError, match=r"empty file \(0 bytes\)"):
        images.load_image(str(path))


def test_pixel_limit_is_max_pixels_alone(tmp_path, monkeypatch):
    # Pillow's soft limit (a warning) must neither refuse an image under MAX_PIXELS...
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 30 * 30)
    monkeypatch.setattr(images, "MAX_PIXELS", 40 * 40)
    assert images.load_image(save(Image.new("RGB", (35, 35)), tmp_path / "ok.png")).size == (35, 35)
    # ...nor change the message for one over it
    with pytest.raises(images.ImageDecodeError, match=r"too large \(41x40 pixels, limit 1,600\)"):
        images.load_image(save(Image.new("RGB", (41, 40)), tmp_path / "big.png"))


def test_decoding_in_threads_leaves_the_warning_filters_alone(tmp_path):
    import threading
    import warnings

    path = save(Image.new("RGB", (8, 8)), tmp_path / "small.png")
    before = list(warnings.filters)

    def work():
        for _ in range(200):
            images.load_image(path)

    threads = [threading.Thread(target=work) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert warnings.filters == before


def pil_blip_processor(size: int):
    """BLIP's image processor on its Pillow backend, the reference for "squash".

    Where torchvision is installed, `BlipImageProcessor` resolves to a torchvision
    backend whose resize is not Pillow's; the Pillow one is the reference here.
    """
    try:
        from transformers import BlipImageProcessorPil as processor_class
    except ImportError:
        from transformers import BlipImageProcessor as processor_class
    return processor_class(size={"height": size, "width": size})


@pytest.mark.parametrize("source, size", [((150, 110), 96), ((640, 480), 384)], ids=["small", "vga"])
def test_png_squash_equals_the_blip_processor_within_1e_5(tmp_path, source, size):
    import torch

    processor = pil_blip_processor(size)
    preprocess = images.Preprocessor(processor, size, "squash")
    rng = np.random.default_rng(0)
    path = save(Image.fromarray(rng.integers(0, 256, (source[1], source[0], 3), dtype=np.uint8)), tmp_path / "x.png")
    theirs = processor(images=Image.open(path), return_tensors="np")["pixel_values"][0]

    floats, _ = preprocess(path)
    assert floats.shape == theirs.shape == (3, size, size)
    assert np.abs(floats - theirs).max() < 1e-5

    pixels, _ = preprocess.pixels(path)
    assert pixels.dtype == np.uint8 and pixels.shape == (size, size, 3)
    batch = preprocess.to_pixel_values([pixels, pixels], "cpu", torch.float32)
    assert batch.dtype == torch.float32 and tuple(batch.shape) == (2, 3, size, size) and batch.is_contiguous()
    assert np.abs(batch[1].numpy() - theirs).max() < 1e-5


@pytest.mark.parametrize("mode", images.RESIZE_MODES)
def test_uint8_path_gives_the_float_path_values(tmp_path, mode):
    preprocess = images.Preprocessor(pil_blip_processor(64), 64, mode)
    paths = [save(Image.effect_noise((90 + 13 * i, 70), 60).convert("RGB"), tmp_path / f"{i}.png") for i in range(3)]
    floats = np.stack([preprocess(p)[0] for p in paths])
    pixels = [preprocess.pixels(p) for p in paths]
    assert [g for _, g in pixels] == [preprocess(p)[1] for p in paths]
    batch = preprocess.to_pixel_values([a for a, _ in pixels]).numpy()
    assert np.abs(batch - floats).max() < 1e-6


def test_to_pixel_values_casts_and_checks_its_input():
    import torch

    pixels = np.zeros((2, 8, 8, 3), dtype=np.uint8)
    pixels[1] = 255
    out = images.to_pixel_values(pixels, "cpu", "bfloat16", mean=(0.5, 0.5, 0.5), std=(0.25, 0.5, 1.0))
    assert out.dtype == torch.bfloat16 and tuple(out.shape) == (2, 3, 8, 8)
    assert out[0, :, 0, 0].float().tolist() == [-2.0, -1.0, -0.5]
    assert out[1, :, 0, 0].float().tolist() == [2.0, 1.0, 0.5]
    same = images.to_pixel_values(torch.from_numpy(pixels), "cpu", torch.bfloat16, (0.5,) * 3, (0.25, 0.5, 1.0))
    assert torch.equal(out, same)
    with pytest.raises(ValueError, match=r"`arrays` must be \(H, W, 3\) uint8 images, got float32"):
        images.to_pixel_values([np.zeros((8, 8, 3), dtype=np.float32)])
    with pytest.raises(ValueError, match="at least one image"):
        images.to_pixel_values([])


def photo_like(width: int, height: int, seed: int = 0) -> Image.Image:
    """A smooth random image with some edges, JPEG-friendly like a photo."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (height // 50 + 2, width // 50 + 2, 3), dtype=np.uint8)
    image = Image.fromarray(small).resize((width, height), Image.Resampling.BICUBIC)
    return Image.fromarray(np.asarray(image) ^ (rng.random((height, width, 1)) < 0.01).astype(np.uint8) * 255)


def test_large_jpeg_gives_the_blip_processor_pixels_by_default(tmp_path):
    """Every pixel is decoded unless `fast_decode` asks for libjpeg's reduced scale."""
    processor = pil_blip_processor(384)
    path = save(photo_like(2000, 1500), tmp_path / "photo.jpg", quality=90)
    theirs = processor(images=Image.open(path), return_tensors="np")["pixel_values"][0]

    exact, _ = images.Preprocessor(processor, 384, "squash")(path)
    assert np.abs(exact - theirs).max() < 1e-5

    fast = images.Preprocessor(processor, 384, "squash", fast_decode=True)
    assert images.load_image(path, min_size=384).size == (1000, 750)
    floats, _ = fast(path)
    assert np.abs(floats - theirs).max() > 1e-2  # a real difference: the reason it is opt-in
