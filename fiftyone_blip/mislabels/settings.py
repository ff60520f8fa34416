"""Label QA's settings: the label kinds a field can hold, prompt templates, what to score and how to flag."""

from __future__ import annotations

import dataclasses
import string

import numpy as np

from fiftyone_blip import fields as schema_fields
from fiftyone_blip.settings import Settings, match_model_setting, setting

METHODS = ("auto", "itm", "itc", "itm+margin")
# The default rule: flag a label whose ITM probability is at most 0.04 (mistakenness
# 1 - p >= 0.96). Chosen on the validation split of held-out shapes, as the cut-off
# with the best worse-of precision and recall at 10% random class noise; it flags
# about 1.5% of a clean set where the earlier default (ITM + margin >= 0.5) flagged
# 15% (benchmarks/eval_flag_rule.py, BENCHMARKS.md).
DEFAULT_METHOD = "itm"
DEFAULT_THRESHOLD = 0.96
LEVELS = ("sample", "label")
# Default prompt templates per model. The bundled shapes-tiny matcher knows only
# its 23 caption words ("photo" and "of" are unknown tokens to it), and scores
# the short label phrase best (benchmarks/eval_mislabels.py --templates).
DEFAULT_TEMPLATE = "a photo of a {label}"
MODEL_TEMPLATES = {"shapes-tiny": "a {label}"}
# Crop padding per model: boxes are grown by this factor around their center.
# shapes-tiny was trained on whole 3x3-grid scenes: a box grown 3x puts the
# object in the middle cell at the size the model saw in training.
DEFAULT_CROP_PADDING = 1.25
MODEL_CROP_PADDING = {"shapes-tiny": 3.0}
# Image-text pairs per ITM forward pass (bounds memory: every pair carries its
# image's patch embeddings through the text encoder's cross-attention).
PAIR_BATCH = 64


def default_template(model: str | None) -> str:
    """The label prompt template used for a model unless one is given."""
    return MODEL_TEMPLATES.get(model or "", DEFAULT_TEMPLATE)


def default_crop_padding(model: str | None) -> float:
    return MODEL_CROP_PADDING.get(model or "", DEFAULT_CROP_PADDING)


def check_template(template: str) -> str:
    """Checks that a prompt template has exactly the one placeholder `{label}`."""
    if not isinstance(template, str):
        raise ValueError(f"`template` must be a string with a {{label}} placeholder, got {template!r}")
    try:
        fields = [(name, spec, conversion) for _, name, spec, conversion in string.Formatter().parse(template)]
    except ValueError as error:
        raise ValueError(f"`template` is not a valid format string ({error}): {template!r}") from None
    names = [name for name, _, _ in fields if name is not None]
    # a format spec or conversion ("{label:>20000000}", "{label:d}", "{label!r}") costs memory or
    # fails on a label only once the model runs: only the plain placeholder is allowed
    for name, spec, conversion in fields:
        if name is not None and (spec or conversion):
            shown = "{" + name + (f"!{conversion}" if conversion else "") + (f":{spec}" if spec else "") + "}"
            raise ValueError(
                f"`template` may hold only the plain {{label}} placeholder (no format spec or conversion), "
                f"got {shown} in {template!r}"
            )
    if "label" not in names:
        raise ValueError(f"`template` must contain {{label}}, got {template!r}")
    if set(names) != {"label"}:
        others = sorted(set(names) - {"label"})
        raise ValueError(f"`template` may hold only the {{label}} placeholder, got {others} in {template!r}")
    return template


# --- label field kinds ---------------------------------------------------------------------------------------


def label_kind(samples, label_field: str) -> str:
    """What a field holds: "classification", "classifications", "detections" or "text".

    Raises:
        ValueError: the field does not exist or holds an unsupported type.
    """
    import fiftyone as fo

    schema = samples.get_field_schema()
    if label_field not in schema:
        names = ", ".join(sorted(compatible_fields(samples))) or "none"
        raise ValueError(f"`label_field` {label_field!r} is not a field of the dataset (compatible fields: {names})")
    field = schema[label_field]
    if isinstance(field, fo.StringField):
        return "text"
    if isinstance(field, fo.EmbeddedDocumentField):
        kinds = {
            fo.Classification: "classification",
            fo.Classifications: "classifications",
            fo.Detections: "detections",
        }
        for cls, kind in kinds.items():
            if issubclass(field.document_type, cls):
                return kind
        type_name = field.document_type.__name__
    else:
        type_name = type(field).__name__
    raise ValueError(
        f"`label_field` {label_field!r} holds {type_name}; label QA scores Classification, Classifications, "
        "Detections or string (free-text) fields"
    )


def compatible_fields(samples) -> list[str]:
    """The sample fields `label_kind` accepts, in schema order (built-in fields left out)."""
    import fiftyone as fo

    names = []
    schema = samples.get_field_schema()
    for name, field in schema.items():
        if name in schema_fields.RESERVED_FIELDS:
            continue
        # an engine run's own bookkeeping ("caption_error", "caption_run") is not a label
        stem, _, suffix = name.rpartition("_")
        if suffix in ("error", "run") and stem in schema:
            continue
        if isinstance(field, fo.StringField) or (
            isinstance(field, fo.EmbeddedDocumentField)
            and issubclass(field.document_type, (fo.Classification, fo.Classifications, fo.Detections))
        ):
            names.append(name)
    return names


def _list_path(kind: str) -> str | None:
    return {"classifications": "classifications", "detections": "detections"}.get(kind)


def label_classes(samples, label_field: str, kind: str) -> list[str]:
    """The distinct labels present in a field (the zero-shot class set for margins)."""
    if kind == "text":
        return []
    path = f"{label_field}.{_list_path(kind)}.label" if _list_path(kind) else f"{label_field}.label"
    return sorted(label for label in samples.distinct(path) if label)


# --- settings ------------------------------------------------------------------------------------------------


METHOD_LABELS = {
    "auto": "Auto (careful match)",
    "itm": "Careful match: how unlikely the label is",
    "itc": "Quick similarity (needs the quick similarity stored)",
    "itm+margin": "Careful match, and how much better another class fits",
}
FLAG_BY = ("threshold", "percentile", "top_k")


@dataclasses.dataclass
class FlagSettings(Settings):
    """How `flag_mislabels` (and `find_mislabels` after scoring) flags; give one of
    threshold, percentile and top_k (none: threshold 0.96, i.e. an ITM probability of at most 0.04)."""

    field: str | None = setting(
        None,
        "where the scores are (default: the label field's name followed by '_match')",
        label="Score field",
        cli_flags=("-f",),
    )
    method: str = setting(
        "auto",
        "how suspicious a label is: the careful match rates how unlikely the label is for the image; the quick "
        "similarity how far apart the image and the label are; the margin adds how much better another class "
        "fits (auto: the careful match)",
        label="Score to rank by",
        choices=METHODS,
        choice_labels=METHOD_LABELS,
    )
    threshold: float | None = setting(
        None,
        "flag the samples whose mistakenness (from 0 to 1) is at least this (default: 0.96, unless a "
        "percentile or a number of samples is given)",
        label="Flag mistakenness at or above",
        min=0,
        max=1,
        form_default=DEFAULT_THRESHOLD,
        form_when={"flag_by": ("threshold",)},
    )
    percentile: float | None = setting(
        None,
        "flag the samples whose mistakenness is at or above this percentile (from 0, below 100)",
        label="Flag at or above percentile",
        min=0,
        max=100,
        form_default=90.0,
        form_when={"flag_by": ("percentile",)},
    )
    top_k: int | None = setting(
        None,
        "flag the k most suspicious",
        label="Flag the k most suspicious",
        min=1,
        form_default=10,
        form_when={"flag_by": ("top_k",)},
    )
    level: str = setting(
        "sample",
        "'sample' flags whole samples; 'label' flags (and tags) each suspicious classification or detection, "
        "and its sample",
        label="Flag",
        choices=LEVELS,
        choice_labels={"sample": "Samples", "label": "Individual labels"},
        form_when={"kind": ("classifications", "detections")},
    )
    tag: str = setting("mislabel", "the sample (and label) tag")
    view_name: str | None = setting(
        None,
        "the saved review view (default: the score field's name, underscores as dashes, then '-review')",
        advanced=True,
    )

    def __post_init__(self):
        super().__post_init__()
        if self.field is not None:
            schema_fields.check_field_name(self.field)
        if not self.tag or not isinstance(self.tag, str):
            raise ValueError(f"`tag` must be a non-empty string, got {self.tag!r}")
        from fiftyone_blip.mislabels.flagging import select_flags

        select_flags(np.zeros(1), *self.flag_values())

    def flag_values(self) -> tuple:
        """(threshold, percentile, top_k), with the default threshold when none is given."""
        if self.threshold is None and self.percentile is None and self.top_k is None:
            return DEFAULT_THRESHOLD, None, None
        return self.threshold, self.percentile, self.top_k

    def score_field(self, label_field: str) -> str:
        return self.field or f"{label_field}_match"


@dataclasses.dataclass
class MislabelSettings(FlagSettings):
    """What `find_mislabels` scores, then how it flags (the `FlagSettings` fields)."""

    model: str | None = match_model_setting()
    template: str | None = setting(
        None,
        "the text each label is put in; must contain {label} (default: 'a photo of a {label}'; 'a {label}' for "
        "shapes-tiny)",
        label="Prompt template",
        form_when={"kind": ("classification", "classifications", "detections")},
    )
    classes: list[str] | None = setting(
        None,
        "the classes a label is compared with for margins, comma-separated (default: the labels present)",
        advanced=True,
    )
    margin: bool = setting(
        True,
        "compute margins against the best other class (one careful match per class and label)",
        label="Compare with the best other class (margin)",
        cli_flags=("--no-margin",),
        cli_help="Skip margins against the best other class (one ITM pass per class and label).",
        form_when={"kind": ("classification", "classifications", "detections")},
    )
    itc: bool = setting(
        False,
        "also store the quick similarity of image and label (the one quick search ranks by)",
        label="Also store the quick similarity",
        advanced=True,
    )
    crop_padding: float | None = setting(
        None,
        "detections: how much each box grows before it is matched, at least 1 (default: 1.25; 3.0 for shapes-tiny)",
        min=1,
        advanced=True,
    )

    def __post_init__(self):
        super().__post_init__()
        if isinstance(self.classes, str):
            self.classes = [c.strip() for c in self.classes.split(",") if c.strip()]
        if self.template is not None:
            check_template(self.template)


@dataclasses.dataclass
class MatchSettings:
    """How labels become texts and which scores are computed.

    Attributes:
        kind: "classification", "classifications", "detections" or "text".
        template: prompt built from a label; must contain {label}.
        classes: the label set for margins; a sample's label outside it gets
            no margin. Ignored for text.
        margin: compute the margin against the best other class (True).
        itc: also compute the ITC cosine (False).
        crop_padding: detections: grow each box by this factor around its
            center before cropping, >= 1.
        resize: how images reach the model's square input ("squash").
        fast_decode: decode large JPEGs at a reduced scale (False).
    """

    kind: str
    template: str = DEFAULT_TEMPLATE
    classes: list[str] = dataclasses.field(default_factory=list)
    margin: bool = True
    itc: bool = False
    crop_padding: float = DEFAULT_CROP_PADDING
    resize: str = "squash"
    fast_decode: bool = False

    def __post_init__(self):
        from fiftyone_blip.images import check_resize

        if self.kind not in ("classification", "classifications", "detections", "text"):
            raise ValueError(f"unsupported label kind {self.kind!r}")
        if self.kind != "text":
            check_template(self.template)
            self.classes = sorted({str(c) for c in self.classes if c})
            if not self.classes:
                raise ValueError("the label set is empty: the field holds no labels in these samples")
        else:
            self.classes, self.margin = [], False
        if not isinstance(self.crop_padding, (int, float)) or self.crop_padding < 1:
            raise ValueError(f"`crop_padding` must be at least 1, got {self.crop_padding!r}")
        check_resize(self.resize)

    def prompt(self, label: str) -> str:
        return label if self.kind == "text" else self.template.format(label=label)

    def as_dict(self) -> dict:
        settings = {"kind": self.kind, "itc": self.itc, "resize": self.resize, "fast_decode": self.fast_decode}
        if self.kind != "text":
            settings.update(template=self.template, margin=self.margin, classes=self.classes)
        if self.kind == "detections":
            settings["crop_padding"] = self.crop_padding
        return settings


def resolve_method(method: str, kind: str, settings: dict | None) -> str:
    """ "auto": the default method (ITM alone: as good a ranking as ITM + margin on held-out shapes)."""
    if method not in METHODS:
        raise ValueError(f"`method` must be one of {METHODS}, got {method!r}")
    settings = settings or {}
    if method == "auto":
        return DEFAULT_METHOD
    if method == "itm+margin" and not settings.get("margin"):
        raise ValueError("`method` 'itm+margin' needs margins: score with margin=True (not possible for text fields)")
    if method == "itc" and not settings.get("itc"):
        raise ValueError("`method` 'itc' needs ITC cosines: score with itc=True")
    return method
