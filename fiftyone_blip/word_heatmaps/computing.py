"""Computing word heatmaps: maps on the model's patch grid, brought back onto each image, and the engine task that stores them."""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
from pathlib import Path

import numpy as np

from fiftyone_blip.word_heatmaps.settings import MODE_TASKS, HeatmapSettings, merge_word_pieces

# ---------------------------------------------------------------- geometry


def map_shape(width: int, height: int, map_size: int) -> tuple[int, int]:
    """(width, height) of a stored map: long side `map_size`, the image's aspect."""
    if width >= height:
        return map_size, max(1, round(map_size * height / width))
    return max(1, round(map_size * width / height)), map_size


def _axis_weights(out_len: int, original_len: int, scale: float, offset: float, size: int, grid: int) -> np.ndarray:
    """(out_len, grid) bilinear weights from grid cells to output pixels along one axis.

    Output pixel i covers original coordinate (i + 0.5) * original_len / out_len,
    which the model saw at `coordinate * scale + offset` of its `size` input;
    grid cell j is centred at (j + 0.5) * size / grid. Pixels the model never
    saw (outside its input after a center crop) get no weight.
    """
    original = (np.arange(out_len) + 0.5) * (original_len / out_len)
    model = original * scale + offset
    seen = (model >= 0) & (model <= size)
    cell = model * (grid / size) - 0.5
    # Beyond the outer cell centres the grid is mirrored, not clamped: a clamped
    # edge cell would make a flat top reaching the border and shift its peak
    # outward; mirrored, every cell peaks at its own centre.
    cell = np.abs(cell)
    cell = np.clip((grid - 1) - np.abs((grid - 1) - cell), 0, grid - 1)
    low = np.floor(cell).astype(int)
    high = np.minimum(low + 1, grid - 1)
    frac = cell - low
    weights = np.zeros((out_len, grid))
    rows = np.arange(out_len)
    np.add.at(weights, (rows, low), 1 - frac)
    np.add.at(weights, (rows, high), frac)
    weights[~seen] = 0
    return weights


def grid_to_image(grid_maps: np.ndarray, geometry, map_size: int) -> np.ndarray:
    """Maps (..., grid, grid) maps over the model input onto the original image.

    Returns (..., height, width) float maps with the image's aspect and long
    side `map_size`: the overlay the App stretches over the whole image.
    """
    grid = grid_maps.shape[-1]
    out_w, out_h = map_shape(geometry.width, geometry.height, map_size)
    wx = _axis_weights(out_w, geometry.width, geometry.scale_x, geometry.offset_x, geometry.size, grid)
    wy = _axis_weights(out_h, geometry.height, geometry.scale_y, geometry.offset_y, geometry.size, grid)
    return wy @ grid_maps @ wx.T


def to_uint8(maps: np.ndarray) -> np.ndarray:
    """Scales each map (over its last two axes) to 0..255."""
    maps = np.asarray(maps, dtype=np.float64)
    low = maps.min(axis=(-2, -1), keepdims=True)
    high = maps.max(axis=(-2, -1), keepdims=True)
    scaled = (maps - low) / np.where(high > low, high - low, 1.0)
    return np.rint(scaled * 255).astype(np.uint8)


def peak(map2d: np.ndarray, width: int, height: int) -> tuple[float, float]:
    """Where a stored map is highest, in original image pixels (x, y).

    Ties (a flat top, common after uint8 scaling) resolve to their centroid.
    """
    map2d = np.asarray(map2d, dtype=np.float64)
    rows, cols = np.nonzero(map2d >= map2d.max() - 1e-9)
    h, w = map2d.shape
    return (cols.mean() + 0.5) * width / w, (rows.mean() + 0.5) * height / h


# ---------------------------------------------------------------- models


def check_model(model, settings: HeatmapSettings) -> None:
    """Refuses settings the model cannot serve; `model` is a `LoadedModel` or a `models.ModelReference`
    (its config is enough: checked before the weights load)."""
    if model.task != MODE_TASKS[settings.mode]:
        raise ValueError(
            f"mode {settings.mode!r} needs a {MODE_TASKS[settings.mode]!r} model, got a {model.task!r} model"
        )
    if settings.mode == "gradcam" and model.dtype == "int8":
        raise ValueError("`dtype` 'int8' has no gradients: gradcam needs float32, bfloat16 or float16")
    if model.attention != "eager":
        # SDPA modules return no attention weights (see sdpa.py).
        raise ValueError("heatmaps read attention weights: load the model with attention='eager'")
    text_config = model.config.text_config
    settings.layer_indices(text_config.num_hidden_layers)
    settings.head_indices(text_config.num_attention_heads)


class HeatmapMaker:
    """Computes per-word maps on the patch grid for batches of images and texts."""

    def __init__(self, loaded, settings: HeatmapSettings):
        import torch

        check_model(loaded, settings)
        self.torch = torch
        self.loaded = loaded
        self.settings = settings
        self.model = loaded.model
        self.tokenizer = loaded.processor.tokenizer
        self.device = loaded.device
        self.grid = loaded.grid_size
        text_config = self.model.config.text_config
        self.bos = text_config.bos_token_id
        self.layers = settings.layer_indices(text_config.num_hidden_layers)
        self.heads = settings.head_indices(text_config.num_attention_heads)
        self.skip_ids = set(self.tokenizer.all_special_ids) | {self.bos, text_config.pad_token_id}

    def generate_captions(self, pixel_values) -> list[str]:
        from fiftyone_blip.captions import Captioner, CaptionSettings

        return [row["caption"] for row in Captioner(self.loaded, CaptionSettings())(pixel_values)]

    def __call__(self, pixel_values, texts: list[str]) -> list[dict]:
        """Returns per sample: words, word maps (words, grid, grid), overall map (grid, grid), probs / match."""
        pixel_values = self.loaded.pixels(pixel_values)
        batch = self.tokenizer(texts, padding=True, return_tensors="pt").to(self.device)
        input_ids, attention_mask = batch["input_ids"], batch["attention_mask"]
        if self.settings.mode == "cross-attention":
            attention, extras = self._cross_attention(pixel_values, input_ids, attention_mask)
        else:
            attention, extras = self._gradcam(pixel_values, input_ids, attention_mask)
        attention = attention.float().cpu().numpy()  # (batch, tokens, patches)
        results = []
        for b in range(len(texts)):
            length = int(attention_mask[b].sum())
            ids = input_ids[b, :length].tolist()
            keep = [i for i in range(length) if ids[i] not in self.skip_ids]
            words = merge_word_pieces(self.tokenizer.convert_ids_to_tokens([ids[i] for i in keep]), keep)
            maps, all_rows = [], set()
            for _, places in words:
                rows = self._rows(places)
                all_rows |= rows
                maps.append(attention[b, sorted(rows)].mean(0))
            grid_maps = (
                np.stack(maps).reshape(-1, self.grid, self.grid) if maps else np.zeros((0, self.grid, self.grid))
            )
            overall = attention[b, sorted(all_rows)].mean(0) if all_rows else attention[b, :length].mean(0)
            row = {
                "words": [word for word, _ in words],
                "maps": grid_maps,
                "overall": overall.reshape(self.grid, self.grid),
            }
            if self.settings.mode == "cross-attention":
                row["probs"] = [float(np.exp(sum(extras[b, p - 1] for p in places))) for _, places in words]
            else:
                row["match"] = float(extras[b])
            results.append(row)
        return results

    def _rows(self, places: list[int]) -> set[int]:
        if self.settings.mode == "gradcam" or self.settings.token_positions == "reading":
            return set(places)
        predicting = {p - 1 for p in places}
        return predicting if self.settings.token_positions == "predicting" else predicting | set(places)

    def _select(self, per_layer):
        """Mean over the chosen layers and heads of (batch, heads, tokens, 1 + patches) tensors.

        The image CLS key is dropped. With `normalize_heads`, each head's map
        is first standardised over the patches (zero mean, unit variance), so
        that diffuse and peaked heads weigh the same.
        """
        stacked = self.torch.stack(list(per_layer))[:, :, self.heads, :, 1:].float()
        if self.settings.normalize_heads:
            mean = stacked.mean(-1, keepdim=True)
            std = stacked.std(-1, keepdim=True).clamp(min=1e-12)
            stacked = (stacked - mean) / std
        return stacked.mean(dim=(0, 2))

    def _cross_attention(self, pixel_values, input_ids, attention_mask):
        torch = self.torch
        input_ids = input_ids.clone()
        input_ids[:, 0] = self.bos  # the decoder starts from [DEC], not the tokenizer's [CLS]
        with torch.inference_mode():
            image_embeds = self.loaded.image_embeds(pixel_values)
            out = self.model.text_decoder(
                input_ids=input_ids,
                attention_mask=attention_mask,
                encoder_hidden_states=image_embeds,
                output_attentions=True,
                return_dict=True,
            )
            _require_cross_attentions(out)
            attention = self._select([out.cross_attentions[i] for i in self.layers])
            # log p(token at t + 1 | steps up to t): teacher forcing scores only the token that follows
            next_logprobs = (
                out.logits.float().log_softmax(-1).gather(-1, input_ids.roll(-1, dims=1).unsqueeze(-1)).squeeze(-1)
            )
        return attention, next_logprobs.cpu().numpy()

    def _gradcam(self, pixel_values, input_ids, attention_mask):
        torch = self.torch
        with torch.no_grad():
            image_embeds = self.loaded.image_embeds(pixel_values)
        with torch.enable_grad():
            out = self.model.text_encoder(
                input_ids=input_ids,
                attention_mask=attention_mask,
                encoder_hidden_states=image_embeds,
                output_attentions=True,
                return_dict=True,
            )
            _require_cross_attentions(out)
            itm = self.model.itm_head(out.last_hidden_state[:, 0])
            chosen = [out.cross_attentions[i] for i in self.layers]
            # Each image's logit depends only on its own row, so one backward pass serves the batch.
            grads = torch.autograd.grad(itm[:, 1].sum(), chosen)
        cams = [(a.detach() * g.clamp(min=0)) for a, g in zip(chosen, grads)]
        cam = self._select(cams)
        cam = cam * attention_mask[:, :, None]  # padding rows carry nothing
        match = itm.detach().float().softmax(-1)[:, 1].cpu().numpy()
        return cam, match


def _require_cross_attentions(out) -> None:
    """SDPA attention returns no attention weights: heatmaps need the eager implementation."""
    if not out.cross_attentions or out.cross_attentions[0] is None:
        raise RuntimeError("the model returned no cross-attentions; load it with attention='eager'")


# ---------------------------------------------------------------- storage and task


def field_names(field: str, mode: str, maps_dir: str | None) -> dict[str, str]:
    names = {"heatmap": field, "words": f"{field}_words", "text": f"{field}_text"}
    names["maps"] = f"{field}_word_maps" if maps_dir else f"{field}_maps"
    names["scores"] = f"{field}_probs" if mode == "cross-attention" else f"{field}_match"
    return names


def sibling_names(field: str) -> list[str]:
    """Every field a heatmap run into `field` may write, whatever its mode and storage (and the
    `F_map_paths` of datasets written before maps were Heatmaps)."""
    names = {**field_names(field, "cross-attention", None), **field_names(field, "gradcam", "x")}
    return [*names.values(), f"{field}_maps", f"{field}_probs", f"{field}_map_paths"]


def result_fields(field: str, mode: str, maps_dir: str | None) -> dict:
    """The heatmap run's result set with the exact type of each field."""
    import fiftyone as fo

    names = field_names(field, mode, maps_dir)
    heatmap = (fo.EmbeddedDocumentField, {"embedded_doc_type": fo.Heatmap})
    return {
        names["heatmap"]: heatmap,
        names["words"]: (fo.ListField, {"subfield": fo.StringField}),
        names["text"]: fo.StringField,
        names["maps"]: (fo.ListField, {"subfield": fo.EmbeddedDocumentField, "embedded_doc_type": fo.Heatmap})
        if maps_dir
        else fo.ArrayField,
        names["scores"]: (fo.ListField, {"subfield": fo.FloatField}) if mode == "cross-attention" else fo.FloatField,
    }


def heatmap_task(
    model,
    settings: HeatmapSettings,
    field: str = "heatmap",
    text_field: str | None = "caption",
    text: str | None = None,
    resize: str = "squash",
    maps_dir: str | None = None,
    fast_decode: bool = False,
):
    """An engine `Task` that writes a caption heatmap and per-word maps into `field` and its siblings.

    `model`: a `models.ModelReference` (loaded once the engine's checks pass)
    or a `LoadedModel`. The text comes from `text` (one text for every image,
    e.g. a query), else from each sample's `text_field`; with neither,
    cross-attention mode captions the image first (greedy) and explains that
    caption. The result set holds every field of the mode and storage; the
    other mode's and storage's fields that an earlier run wrote into `field`
    are cleared by each new result.
    """

    from fiftyone_blip import engine

    _check_text_source(text, text_field, settings.mode)
    check_model(model, settings)
    names = field_names(field, settings.mode, maps_dir)
    reads = (text_field,) if text is None and text_field else ()
    folder = check_writable_folder(maps_dir) if maps_dir else None

    def bind():
        loaded = model.load()
        preprocess = loaded.preprocessor(resize, fast_decode)
        maker = HeatmapMaker(loaded, settings)
        if folder is not None:
            writable_folder(folder)  # made once every check passed and the model loaded

        def prepare(path, sample_text=None):
            if reads and not (isinstance(sample_text, str) and sample_text.strip()):
                raise ValueError(f"no text in field {text_field!r}")
            array, geometry = preprocess(path)
            return array, geometry, text if text is not None else sample_text, path

        def step(inputs, written=None):
            pixels = engine.to_batch([x[0] for x in inputs], "cpu")
            texts = [x[2] for x in inputs]
            missing = [i for i, t in enumerate(texts) if t is None]
            if missing:
                for i, caption in zip(missing, maker.generate_captions(pixels[missing])):
                    texts[i] = caption or "."
            rows = maker(pixels, texts)
            written = [] if written is None else written  # files this step created
            return [
                _stored_values(row, geometry, sample_text, names, settings, folder, written)
                for (_, geometry, _, _), sample_text, row in zip(inputs, texts, rows)
            ]

        return prepare, _removing_files_on_error(step) if folder is not None else step

    wanted = result_fields(field, settings.mode, maps_dir)
    return engine.Task(
        capability="heatmaps",
        field=field,
        fields=wanted,
        settings={
            **settings.as_dict(),
            "resize": resize,
            "fast_decode": fast_decode,
            "text": text,
            "text_field": None if text is not None else text_field,
            "maps_dir": str(folder) if folder else None,
        },
        identity=model.identity,
        bind=bind,
        reads=reads,
        siblings=tuple(name for name in sibling_names(field) if name not in wanted),
        descriptions=field_descriptions(names, settings.mode, maps_dir),
        no_patches="word heatmaps do not run on patches views: run them on the images "
        "(the maps cover the whole image, where the boxes are drawn)",
    )


def _check_text_source(text: str | None, text_field: str | None, mode: str) -> None:
    """Refuses an empty text, and gradcam with nothing to explain (it does not caption)."""
    if text is not None and not text.strip():
        raise ValueError("`text` must not be empty")
    if text is None and text_field is None and mode == "gradcam":
        raise ValueError("gradcam explains a given text: pass `text` or `text_field`")


def _stored_values(row, geometry, text: str, names: dict, settings: HeatmapSettings, folder, written: list) -> dict:
    """One sample's stored values: its maps brought onto the image, in the database or as files in `folder`."""
    import fiftyone as fo

    word_maps = to_uint8(grid_to_image(row["maps"], geometry, settings.map_size))
    overall = to_uint8(grid_to_image(row["overall"], geometry, settings.map_size))
    values = {names["words"]: row["words"], names["text"]: text}
    if folder is not None:
        caption_path, paths = save_map_files(folder, overall, row["words"], word_maps, written)
        heatmap = fo.Heatmap(map_path=caption_path, range=[0, 255])
        values[names["maps"]] = [fo.Heatmap(map_path=p, range=[0, 255]).to_mongo() for p in paths]
    else:
        heatmap = fo.Heatmap(map=overall, range=[0, 255])
        values[names["maps"]] = fo.ArrayField().to_mongo(word_maps)
    values[names["heatmap"]] = heatmap.to_mongo()
    values[names["scores"]] = row["probs"] if settings.mode == "cross-attention" else row["match"]
    return values


def field_descriptions(names: dict[str, str], mode: str, maps_dir) -> dict[str, str]:
    """What each heatmap field holds (its FiftyOne description)."""
    how = "BLIP decoder cross-attention" if mode == "cross-attention" else "Grad-CAM of BLIP's ITM head"
    return {
        names["heatmap"]: f"where the image supports the whole text ({how}; 0..255)",
        names["words"]: f"the words of {names['text']!r} that the per-word maps explain, in order",
        names["text"]: "the text the heatmaps explain",
        names["maps"]: f"one map per word of {names['words']!r} ({how}): "
        + ("Heatmaps of PNG files, exported with the dataset" if maps_dir else "uint8 array (words, height, width)"),
        names["scores"]: "each word's probability under the captioner"
        if mode == "cross-attention"
        else "BLIP ITM probability that image and text match",
    }


def check_writable_folder(folder, name: str = "maps_dir") -> Path:
    """Checks, without making `folder`, that it is a writable folder or could be made as one.

    A file is written and removed in the nearest existing folder (a real write,
    not `os.access`: root passes access checks on a read-only mount).

    Raises:
        ValueError: a file in the way, or the nearest existing folder cannot be written.
    """
    import tempfile

    path = Path(folder).expanduser().resolve()
    existing = next(p for p in (path, *path.parents) if p.exists())
    try:
        if not existing.is_dir():
            raise NotADirectoryError(20, "a file is in the way")
        with tempfile.NamedTemporaryFile(dir=existing, prefix=".write-check-"):
            pass
    except OSError as error:
        raise ValueError(f"`{name}` {str(folder)!r} is not a writable folder ({error.strerror or error})") from None
    return path


def writable_folder(folder, name: str = "maps_dir") -> Path:
    """Creates `folder` if needed and checks that a file can be written in it (before any work).

    Raises:
        ValueError: the folder cannot be created or written (read-only, no
            permission, a file in the way), naming the parameter and the path.
    """
    import tempfile

    path = Path(folder).expanduser().resolve()
    try:
        path.mkdir(parents=True, exist_ok=True)
        # a real write, not os.access: root passes access checks on a read-only mount
        with tempfile.NamedTemporaryFile(dir=path, prefix=".write-check-"):
            pass
    except OSError as error:
        raise ValueError(f"`{name}` {str(folder)!r} is not a writable folder ({error.strerror or error})") from None
    return path


def save_map_files(folder: Path, overall: np.ndarray, words: list[str], word_maps: np.ndarray, written: list):
    """Writes a sample's maps as greyscale PNGs; returns (caption map path, per-word map paths).

    The subfolder is named by a hash of the maps themselves, so a file, once
    a sample refers to it, never changes: another run (another dataset,
    model or settings) into the same folder writes other maps elsewhere, and
    the same maps again land on identical files, which are left as they are.
    Each file is written under a temporary name and renamed, so no reader
    sees half a PNG. New files are appended to `written`.
    """
    from PIL import Image

    digest = hashlib.sha1()
    for part in (overall.shape, word_maps.shape, words):
        digest.update(repr(part).encode())
    digest.update(np.ascontiguousarray(overall).tobytes())
    digest.update(np.ascontiguousarray(word_maps).tobytes())
    where = folder / digest.hexdigest()[:24]
    where.mkdir(parents=True, exist_ok=True)
    targets = [(where / "caption.png", overall)] + [
        (where / f"{i:03d}-{re.sub(r'[^A-Za-z0-9]+', '_', word)[:40]}.png", word_map)
        for i, (word, word_map) in enumerate(zip(words, word_maps))
    ]
    for target, array in targets:
        if target.exists():
            continue
        partial = target.with_name(f".{target.name}.{os.getpid()}.tmp")
        try:
            Image.fromarray(array, mode="L").save(partial, format="PNG")
            os.replace(partial, target)
        finally:
            partial.unlink(missing_ok=True)
        written.append(target)
    return str(targets[0][0]), [str(target) for target, _ in targets[1:]]


def _removing_files_on_error(step):
    """Wraps a step that writes map files: if a write fails (disk full, permissions), the files of
    the batch are removed (no sample will refer to them) and one `OSError` names the cause."""

    def guarded(inputs):
        written: list[Path] = []
        try:
            return step(inputs, written)
        except OSError as error:
            for target in written:
                target.unlink(missing_ok=True)
                with contextlib.suppress(OSError):
                    target.parent.rmdir()  # only if empty
            reason = error.strerror or str(error)
            raise OSError(error.errno, f"heatmap maps could not be written ({reason}): {error.filename}") from None

    return guarded


def run(samples, settings: HeatmapSettings, options):
    """Computes heatmaps of `samples` on the engine; see `fiftyone_blip.heatmaps`."""
    from fiftyone_blip import engine

    text_field = settings.text_field if settings.text is None else None
    if text_field is not None:
        if text_field not in samples._dataset.get_field_schema():
            raise ValueError(f"`text_field` {text_field!r} is not a field of the dataset: caption the samples first")
        samples = samples.exists(text_field)
    return engine.run(samples, task_for(settings, options), options)


def task_for(settings: HeatmapSettings, options):
    """The engine `Task` a heatmap run with these settings and options would run (its model not loaded)."""
    from fiftyone_blip import models

    return heatmap_task(
        models.reference_for(settings.model, MODE_TASKS[settings.mode], options, attention="eager"),
        settings,
        field=settings.field,
        text_field=settings.text_field,
        text=settings.text,
        resize=options.resize,
        maps_dir=settings.maps_dir,
        fast_decode=options.fast_decode,
    )
