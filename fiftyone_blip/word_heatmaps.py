"""Where BLIP looked: one heatmap per caption word, and one for the whole caption.

(The SDK function is `fiftyone_blip.heatmaps`, whose work is `run` here; a
module named `heatmaps` would replace that function on the package when
imported, so this one is `word_heatmaps`.)

Two modes:

- "cross-attention": one teacher-forced pass of the captioner's text decoder
  over the caption (`generate` returns no cross-attentions for BLIP), with
  attention outputs; heads and layers are averaged over a chosen set. A word's
  map is the mean over the decoder steps that read its word pieces and/or the
  steps that predict them (`token_positions`). Each word also gets its
  probability under the model (the product of its pieces' probabilities).
- "gradcam": BLIP's own Grad-CAM, for any text (a caption or a query): the
  gradient of the ITM head's match logit with respect to the cross-attention
  probabilities of one text-encoder layer, clamped at zero, times those
  probabilities, averaged over heads.

Maps come out on the model's patch grid (image_size // patch_size, read from
the config) and are mapped back onto the original image through the resize
`Geometry`, so an overlay lines up whatever the resize mode: with
center-crop, parts the model never saw are zero; with letterbox, the padding
is dropped. Stored maps are uint8 (0..255, each map scaled to its own range)
with the long side `map_size` pixels and the image's aspect.

`heatmap_task` turns a loaded model and `HeatmapSettings` into an engine
`Task` that writes, per sample (`F` is the field):

- `F`: an `fo.Heatmap` of the whole caption, which the App overlays;
- `F_words`: the caption's words (word pieces merged; punctuation dropped);
- `F_maps`: a uint8 array (words, height, width) of per-word maps, or, with
  `maps_dir`, `F_word_maps`: one `fo.Heatmap` per word, each a greyscale PNG
  file (`map_path`). FiftyOne's exporters treat every `map_path` of a Heatmap
  as media, also inside a list, so a FiftyOneDataset export with
  `export_media=True` copies the per-word files with the caption's and
  rewrites their paths (datasets written before kept plain paths in
  `F_map_paths`; they are still read);
- `F_text`: the text the maps explain;
- `F_probs` (cross-attention): each word's probability under the captioner;
  `F_match` (gradcam): the ITM match probability of image and text;
- `F_error` / `F_run`: written by the engine.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import os
import re
from pathlib import Path

import numpy as np

from fiftyone_blip.fields import check_field_name
from fiftyone_blip.settings import Settings, setting

MODES = ("cross-attention", "gradcam")
TOKEN_POSITIONS = ("both", "reading", "predicting")
MODE_TASKS = {"cross-attention": "caption", "gradcam": "match"}
_WORDLIKE = re.compile(r"\w")


MODE_LABELS = {
    "cross-attention": "Cross-attention (captioner decoder, with word probabilities)",
    "gradcam": "Grad-CAM (matching model; any text)",
}
TOKEN_POSITION_LABELS = {
    "both": "Steps that read and that predict the word",
    "reading": "Steps that read the word",
    "predicting": "Steps that predict the word",
}
# the fields of `HeatmapSettings` that change the maps themselves (the rest say where they go)
MAP_SETTINGS = ("mode", "layers", "heads", "token_positions", "normalize_heads", "map_size")


@dataclasses.dataclass
class HeatmapSettings(Settings):
    """What `heatmaps` explains, where it writes, and how the maps are computed.

    `layers` (None): "all" for cross-attention; for gradcam the layer at two
    thirds of the depth, but at most the last but one, whose word tokens
    still reach the match logit: layer 8 of 12 for BLIP-base, as in BLIP's
    own Grad-CAM.
    """

    run_defaults = {"batch_size": 8}

    mode: str = setting(
        "cross-attention",
        "where a map comes from: cross-attention shows where the captioner looked as it wrote each word; "
        "Grad-CAM shows which parts of the image made the matching model accept the text",
        choices=MODES,
        choice_labels=MODE_LABELS,
    )
    model: str | None = setting(
        None,
        "a Hugging Face hub id, a model folder or 'shapes-tiny' (default: Salesforce's base captioning model "
        "for cross-attention, its base matching model for Grad-CAM)",
        cli_flags=("-m",),
    )
    field: str = setting("heatmap", "the field for the caption heatmap", label="Heatmap field", cli_flags=("-f",))
    text_field: str | None = setting(
        "caption",
        "the field holding each sample's text (with neither a field nor a text, cross-attention captions each "
        "image first)",
        form_when={"text_source": ("field",)},
    )
    text: str | None = setting(
        None,
        "one text (e.g. a query) to explain on every image",
        cli_flags=("-t",),
        form_when={"text_source": ("text",)},
    )
    layers: str | int | list[int] | None = setting(
        None,
        "which text layers to average: 'all', 'last', or layer numbers like 0,1 (default: all for cross-attention, one chosen layer for Grad-CAM)",
        advanced=True,
    )
    heads: str | list[int] = setting(
        "all", "which attention heads to average: 'all', or head numbers like 0,1", advanced=True
    )
    token_positions: str = setting(
        "both",
        "cross-attention: average the decoder steps that read a word, predict it, or both",
        label="Word steps",
        choices=TOKEN_POSITIONS,
        choice_labels=TOKEN_POSITION_LABELS,
        form_when={"mode": ("cross-attention",)},
        advanced=True,
    )
    normalize_heads: bool = setting(
        False,
        "standardise each head's map over the patches before averaging, so diffuse and peaked heads weigh the same",
        label="Standardise each head's map before averaging",
        advanced=True,
    )
    map_size: int = setting(
        64, "long side of stored maps in pixels", label="Map size (long side, pixels)", min=8, max=1024, advanced=True
    )
    maps_dir: str | None = setting(
        None,
        "a folder for per-word PNG maps (empty: the maps are stored in the samples)",
        label="Folder for per-word PNG maps",
    )

    def __post_init__(self):
        if self.mode not in MODES:
            raise ValueError(f"`mode` must be one of {MODES}, got {self.mode!r}")
        # "0,2" (from a form or a command line) means [0, 2]; empty text means the default
        if isinstance(self.layers, str):
            self.layers = self.layers.strip() or None
        if isinstance(self.heads, str):
            self.heads = self.heads.strip() or "all"
        if isinstance(self.layers, int):
            self.layers = [self.layers]
        elif self.layers is not None and self.layers not in ("all", "last"):
            self.layers = _int_list(self.layers, "layers", "'all', 'last', an index or a list of indices")
        if self.heads != "all":
            self.heads = _int_list(self.heads, "heads", "'all' or a list of indices")
            if min(self.heads) < 0:
                raise ValueError(f"`heads` numbers must be 0 or more, got {self.heads}")
        if self.token_positions not in TOKEN_POSITIONS:
            raise ValueError(f"`token_positions` must be one of {TOKEN_POSITIONS}, got {self.token_positions!r}")
        if not isinstance(self.normalize_heads, bool):
            raise ValueError(f"`normalize_heads` must be True or False, got {self.normalize_heads!r}")
        if not isinstance(self.map_size, int) or not 8 <= self.map_size <= 1024:
            raise ValueError(f"`map_size` must be from 8 to 1024, got {self.map_size!r}")
        check_field_name(self.field)
        if self.text is None and self.text_field is not None:
            check_field_name(self.text_field)
        if self.text is not None and not self.text.strip():
            raise ValueError("`text` must not be empty")
        if self.text is None and self.text_field is None and self.mode == "gradcam":
            raise ValueError("gradcam explains a given text: pass `text` or `text_field`")

    @classmethod
    def from_params(cls, params: dict, **overrides):
        # a form picks the text by `text_source`: a field, one text, or (cross-attention) a fresh caption
        source = (params or {}).get("text_source")
        if source is not None:
            if source != "field":
                overrides.setdefault("text_field", None)
            if source != "text":
                overrides.setdefault("text", None)
        return super().from_params(params, **overrides)

    def layer_indices(self, num_layers: int) -> list[int]:
        """The layers to use for a text model of `num_layers` layers."""
        if self.layers == "all" or (self.layers is None and self.mode == "cross-attention"):
            return list(range(num_layers))
        if self.layers == "last":
            return [num_layers - 1]
        if self.layers is None:
            return [default_gradcam_layer(num_layers)]
        for index in self.layers:
            if not -num_layers <= index < num_layers:
                raise ValueError(f"`layers` index {index} is out of range for a {num_layers}-layer text model")
        return sorted({index % num_layers for index in self.layers})

    def head_indices(self, num_heads: int) -> list[int]:
        if self.heads == "all":
            return list(range(num_heads))
        for index in self.heads:
            if not 0 <= index < num_heads:
                raise ValueError(f"`heads` index {index} is out of range for {num_heads} attention heads")
        return sorted(set(self.heads))

    def as_dict(self) -> dict:
        """The settings that change the maps (they form the run fingerprint)."""
        keep = {name: getattr(self, name) for name in MAP_SETTINGS}
        if self.mode == "gradcam":
            keep.pop("token_positions")
        return keep


def _int_list(values, name: str, expected: str) -> list[int]:
    if isinstance(values, str):
        values = [v for v in re.split(r"[,\s]+", values.strip()) if v]
    try:
        result = [int(v) for v in values]
    except (TypeError, ValueError):
        raise ValueError(f"`{name}` must be {expected}, got {values!r}") from None
    if not result:
        raise ValueError(f"`{name}` must be {expected}, got none")
    return result


def default_gradcam_layer(num_layers: int) -> int:
    """Two thirds of the depth (8 of 12, as in BLIP's Grad-CAM), at most the last but one.

    The last layer's word tokens do not reach the match logit, which reads
    only the first token's output: their gradient is zero there.
    """
    return max(0, min(round(num_layers * 2 / 3), num_layers - 2))


def merge_word_pieces(tokens: list[str], positions: list[int]) -> list[tuple[str, list[int]]]:
    """Groups WordPiece tokens into words: [(word, [positions of its pieces])].

    A piece starting with "##" continues the word before it. Words with no
    letter or digit (punctuation) are dropped.
    """
    words: list[tuple[str, list[int]]] = []
    for token, position in zip(tokens, positions):
        if token.startswith("##") and words:
            word, places = words[-1]
            words[-1] = (word + token[2:], places + [position])
        else:
            words.append((token, [position]))
    return [(word, places) for word, places in words if _WORDLIKE.search(word)]


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
    import fiftyone as fo

    from fiftyone_blip import engine

    if text is not None and not text.strip():
        raise ValueError("`text` must not be empty")
    if text is None and text_field is None and settings.mode == "gradcam":
        raise ValueError("gradcam explains a given text: pass `text` or `text_field`")
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
            out = []
            written = [] if written is None else written  # files this step created
            for (_, geometry, _, _), sample_text, row in zip(inputs, texts, rows):
                word_maps = to_uint8(grid_to_image(row["maps"], geometry, settings.map_size))
                overall = to_uint8(grid_to_image(row["overall"], geometry, settings.map_size))
                values = {names["words"]: row["words"], names["text"]: sample_text}
                if folder is not None:
                    caption_path, paths = save_map_files(folder, overall, row["words"], word_maps, written)
                    heatmap = fo.Heatmap(map_path=caption_path, range=[0, 255])
                    values[names["maps"]] = [fo.Heatmap(map_path=p, range=[0, 255]).to_mongo() for p in paths]
                else:
                    heatmap = fo.Heatmap(map=overall, range=[0, 255])
                    values[names["maps"]] = fo.ArrayField().to_mongo(word_maps)
                values[names["heatmap"]] = heatmap.to_mongo()
                values[names["scores"]] = row["probs"] if settings.mode == "cross-attention" else row["match"]
                out.append(values)
            return out

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
