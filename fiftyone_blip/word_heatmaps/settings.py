"""Heatmap settings: the mode, layers, heads, token positions and map size, and caption words from word pieces."""

from __future__ import annotations

import dataclasses
import re

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
