"""Image-text matching scores (BLIP's ITM head and ITC cosine) and mislabel flags.

Label QA in two steps:

1. `match_task` (an engine `Task`) scores what a label field holds against
   its image with BLIP's image-text matching head, and stores the scores:

   - classification labels (`Classification`, `Classifications`): the ITM
     probability of a prompt built from the label ("a photo of a {label}"),
     and the margin against the best other class of the label set (a
     zero-shot classification over the classes present);
   - detections (`Detections`): the same per object, on its crop;
   - free text (a string field, e.g. human-written or generated captions):
     the ITM probability of the text itself;
   - optionally the ITC cosine between image and text embeddings.

   Per label, the scores go on the label itself (`{field}_itm`,
   `{field}_margin`, `{field}_itc` attributes); per sample, `{field}` holds
   the lowest ITM probability of its labels, `{field}_margin` and
   `{field}_itc` the lowest margin and cosine.

2. `flag` turns stored scores into a mistakenness score (higher = more
   likely wrong), flags by an absolute threshold, a percentile or a top-k,
   tags the flagged samples (or labels) and saves a review view sorted most
   suspicious first. It needs no model, so a re-run with another threshold
   is instant.

ITM probabilities are ranking scores, not calibrated probabilities.
"""

from __future__ import annotations

import dataclasses
import string

import numpy as np

from fiftyone_blip import app_config
from fiftyone_blip import fields as schema_fields
from fiftyone_blip.settings import Settings, setting

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
    "auto": "Auto (ITM probability)",
    "itm": "ITM probability",
    "itc": "ITC cosine (needs ITC scores)",
    "itm+margin": "ITM + margin against the best other class",
}
FLAG_BY = ("threshold", "percentile", "top_k")


@dataclasses.dataclass
class FlagSettings(Settings):
    """How `flag_mislabels` (and `find_mislabels` after scoring) flags; give one of
    threshold, percentile and top_k (none: threshold 0.96, i.e. an ITM probability of at most 0.04)."""

    field: str | None = setting(
        None, "where the scores are (None: '{label_field}_match')", label="Score field", cli_flags=("-f",)
    )
    method: str = setting(
        "auto",
        "the score to rank by: 'itm': 1 - p; 'itc': (1 - cosine) / 2; 'itm+margin': (2 - p - margin) / 3 ('auto': itm)",
        label="Score to rank by",
        choices=METHODS,
        choice_labels=METHOD_LABELS,
    )
    threshold: float | None = setting(
        None,
        "flag mistakenness >= this, in [0, 1] (None with no percentile or top_k: 0.96)",
        label="Flag mistakenness at or above",
        min=0,
        max=1,
        form_default=DEFAULT_THRESHOLD,
        form_when={"flag_by": ("threshold",)},
    )
    percentile: float | None = setting(
        None,
        "flag mistakenness at or above this percentile, in [0, 100)",
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
        "'sample' flags samples; 'label' flags classifications / detections (and tags them) and their samples",
        label="Flag",
        choices=LEVELS,
        choice_labels={"sample": "Samples", "label": "Individual labels"},
        form_when={"kind": ("classifications", "detections")},
    )
    tag: str = setting("mislabel", "the sample (and label) tag")
    view_name: str | None = setting(
        None, "the saved review view (None: '{field}-review', underscores as dashes)", advanced=True
    )

    def __post_init__(self):
        super().__post_init__()
        if self.field is not None:
            schema_fields.check_field_name(self.field)
        if not self.tag or not isinstance(self.tag, str):
            raise ValueError(f"`tag` must be a non-empty string, got {self.tag!r}")
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

    model: str | None = setting(
        None,
        "a BlipForImageTextRetrieval hub id, local directory or 'shapes-tiny' (None: Salesforce/blip-itm-base-coco)",
        cli_flags=("-m",),
        envvar="FIFTYONE_BLIP_MATCH_MODEL",
    )
    template: str | None = setting(
        None,
        "the label prompt; must contain {label} (None: 'a photo of a {label}'; 'a {label}' for shapes-tiny)",
        label="Prompt template",
        form_when={"kind": ("classification", "classifications", "detections")},
    )
    classes: list[str] | None = setting(
        None, "the label set for margins, a list or comma-separated text (None: the labels present)", advanced=True
    )
    margin: bool = setting(
        True,
        "compute margins against the best other class (one ITM pass per class and label)",
        label="Margin against the best other class",
        cli_flags=("--no-margin",),
        cli_help="Skip margins against the best other class (one ITM pass per class and label).",
        form_when={"kind": ("classification", "classifications", "detections")},
    )
    itc: bool = setting(
        False, "also store ITC cosine similarities", label="Also store ITC cosine similarity", advanced=True
    )
    crop_padding: float | None = setting(
        None, "detections: box growth factor, >= 1 (None: 1.25; 3.0 for shapes-tiny)", min=1, advanced=True
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
            raise ValueError(f"`crop_padding` must be >= 1, got {self.crop_padding!r}")
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


# --- the scorer ----------------------------------------------------------------------------------------------


class Matcher:
    """ITM probabilities and ITC cosines for one loaded `BlipForImageTextRetrieval`."""

    def __init__(self, loaded):
        import torch

        self.torch = torch
        self.loaded = loaded
        self.model = loaded.model
        self.tokenizer = loaded.processor.tokenizer
        self.device = loaded.device
        text_config = self.model.config.text_config
        self.max_length = min(int(self.tokenizer.model_max_length), text_config.max_position_embeddings)
        self._text_cache: dict[str, tuple] = {}

    def tokens(self, texts: list[str]):
        """Padded token ids and mask for texts (BLIP's tokenizer, truncated to the model's length)."""
        return self.loaded.text_tokens(texts, self.max_length)

    def itm(self, image_embeds, image_index: list[int], texts: list[str]) -> np.ndarray:
        """ITM match probability of each pair (image_embeds[image_index[i]], texts[i])."""
        torch = self.torch
        out = []
        for start in range(0, len(texts), PAIR_BATCH):
            chunk = texts[start : start + PAIR_BATCH]
            index = torch.as_tensor(image_index[start : start + PAIR_BATCH], device=image_embeds.device)
            ids, mask = self.tokens(chunk)
            logits = self.loaded.itm_logits(image_embeds.index_select(0, index), ids, mask)
            out.append(logits.softmax(-1)[:, 1].cpu())
        return torch.cat(out).numpy() if out else np.zeros(0, dtype=np.float32)

    def image_features(self, image_embeds):
        """Normalized ITC image embeddings (the model's retrieval heads)."""
        return self.loaded.heads.image_features(image_embeds)

    def text_features(self, texts: list[str]):
        """Normalized ITC text embeddings (unimodal text encoder)."""
        return self.loaded.heads.text_features(*self.tokens(texts))

    def score(
        self,
        pixel_values,
        texts: list[str],
        classes: list[str] | None = None,
        template: str | None = None,
        itc: bool = True,
        own_itm: bool = True,
    ) -> dict[str, np.ndarray]:
        """Scores one text per image; with `classes`, also every class prompt per image.

        Args:
            pixel_values: (n, 3, size, size) tensor.
            texts: n texts, one per image.
            classes: optional class names; their prompts are `template.format(label=c)`.

        Returns:
            {"itm": (n,)} (unless `own_itm` is False: the texts are class
            prompts already), with `itc` "itc": (n,), with classes "class_itm": (n, C).
        """
        torch = self.torch
        with torch.inference_mode(), self.loaded.autocast():
            embeds = self.loaded.image_embeds(pixel_values)
            n = embeds.shape[0]
            result = {"itm": self.itm(embeds, list(range(n)), texts)} if own_itm else {}
            if itc:
                result["itc"] = (self.image_features(embeds) * self.text_features(texts)).sum(-1).cpu().numpy()
            if classes:
                prompts = [template.format(label=c) for c in classes]
                pairs = [(i, p) for i in range(n) for p in prompts]
                probs = self.itm(embeds, [i for i, _ in pairs], [p for _, p in pairs])
                result["class_itm"] = probs.reshape(n, len(classes))
        return result


# --- the engine task -----------------------------------------------------------------------------------------


@dataclasses.dataclass
class _Item:
    """One sample's model inputs: image views (whole image or crops) and their texts."""

    pixels: list  # one CHW array per view
    labels: list[str]  # one label (or caption) per view
    # embedded attribute path prefix per view ("gt" for a Classification), None for text; for list labels
    # first (sample id, label id), made a stored path ("gt.detections.3") by `stored_label_paths`
    paths: list
    siblings: list[set]  # per view: labels that must not count as "the best other class"


def crop(image, box: list[float], padding: float):
    """Crops a relative [x, y, w, h] box grown by `padding` around its center (clipped to the image)."""
    width, height = image.size
    x, y, w, h = box
    cx, cy = (x + w / 2) * width, (y + h / 2) * height
    half_w, half_h = max(w * width * padding / 2, 1.0), max(h * height * padding / 2, 1.0)
    left, top = max(0, int(round(cx - half_w))), max(0, int(round(cy - half_h)))
    right, bottom = min(width, int(round(cx + half_w))), min(height, int(round(cy + half_h)))
    if right <= left or bottom <= top:
        raise ValueError(f"box {box} lies outside the image")
    return image.crop((left, top, right, bottom))


def _views(preprocess, settings: MatchSettings, label_field: str, path, value, sample_id=None) -> _Item:
    """The image views (whole image or crops) and texts one sample gives to score.

    List labels are keyed (sample id, label id) here; `stored_label_paths` turns that into the
    stored position, since a view's label lists may be filtered (`filter_labels`)."""
    from fiftyone_blip.images import load_image

    kind = settings.kind
    if kind == "text":
        text = value.strip() if isinstance(value, str) else ""
        if not text:
            return _Item([], [], [], [])
        return _Item([preprocess(path)[0]], [text], [None], [set()])
    if value is None:
        return _Item([], [], [], [])
    if kind == "classification":
        labels = [(value.label, f"{label_field}")] if value.label else []
    else:
        items = getattr(value, _list_path(kind)) or []
        labels = [(lab.label, (sample_id, lab.id)) for lab in items if lab.label]
    if not labels:
        return _Item([], [], [], [])
    if kind == "detections":
        image = load_image(path)
        detections = {detection.id: detection for detection in value.detections}
        boxes = [detections[key[1]].bounding_box for _, key in labels]
        pixels = [preprocess.from_image(crop(image, box, settings.crop_padding))[0] for box in boxes]
        siblings = [{label} for label, _ in labels]
    else:
        array = preprocess(path)[0]
        pixels = [array] * len(labels)
        # multi-label: the sample's other labels are not rivals of this one
        siblings = [{label for label, _ in labels}] * len(labels)
    return _Item(pixels, [label for label, _ in labels], [p for _, p in labels], siblings)


def match_task(model, settings: MatchSettings, label_field: str, field: str, dataset):
    """An engine `Task` that scores `label_field` against each image into `field` and siblings.

    `model`: a `models.ModelReference` (loaded once the engine's checks pass)
    or a `LoadedModel`. `dataset` is the collection's dataset: per-label
    scores are written at the stored position of each label's id, looked up
    there per batch, because a view's label lists may be filtered
    (`filter_labels`) and a position in the view is not a position in the
    stored list.
    """
    import fiftyone as fo

    from fiftyone_blip import engine

    def bind():
        return _match_step(model.load(), settings, label_field, field, dataset)

    names = ["itm"] + (["margin"] if settings.margin else []) + (["itc"] if settings.itc else [])
    fields = {field: fo.FloatField, **{f"{field}_{name}": fo.FloatField for name in names[1:]}}
    return engine.Task(
        capability="match",
        field=field,
        fields=fields,
        settings={**settings.as_dict(), "label_field": label_field},
        identity=model.identity,
        bind=bind,
        reads=(label_field, "id"),
        required=(field,),  # a margin or cosine can be missing where a label has none
        label_attributes=dict.fromkeys(label_attribute_paths(label_field, settings.kind, field, names), fo.FloatField),
        siblings=tuple(f"{field}_{name}" for name in ("margin", "itc") if name not in names),
        descriptions=score_descriptions(label_field, settings.kind, field, settings.margin, settings.itc),
    )


def _match_step(loaded, settings: MatchSettings, label_field: str, field: str, dataset):
    """(prepare, step) of `match_task` on a loaded model."""
    from fiftyone_blip import engine

    preprocess = loaded.preprocessor(settings.resize, settings.fast_decode)
    matcher = Matcher(loaded)
    classes = settings.classes if settings.margin else []
    class_index = {c: i for i, c in enumerate(classes)}

    def prepare(path, value, sample_id):
        return _views(preprocess, settings, label_field, path, value, sample_id)

    def step(inputs: list[_Item]) -> list[dict]:
        views = [(n, k) for n, item in enumerate(inputs) for k in range(len(item.labels))]
        rows: list[dict] = [{} for _ in inputs]
        if not views:
            return [{field: None} for _ in inputs]
        pixels = engine.to_batch([inputs[n].pixels[k] for n, k in views], "cpu")
        texts = [settings.prompt(inputs[n].labels[k]) for n, k in views]
        # a label of the class set already gets its own prompt's ITM among the class prompts
        own_itm = not classes or any(inputs[n].labels[k] not in class_index for n, k in views)
        scores = matcher.score(pixels, texts, classes, settings.template, itc=settings.itc, own_itm=own_itm)
        per_sample: dict[int, dict[str, list]] = {n: {"itm": [], "margin": [], "itc": []} for n in range(len(inputs))}
        if _list_path(settings.kind):
            inputs = stored_label_paths(dataset, label_field, _list_path(settings.kind), inputs)
        for v, (n, k) in enumerate(views):
            item = inputs[n]
            values = {"itm": float(scores["itm"][v])} if own_itm else {}
            if classes:
                label = item.labels[k]
                row = scores["class_itm"][v]
                if label in class_index:
                    itm = values["itm"] = float(row[class_index[label]])
                    rivals = [row[i] for c, i in class_index.items() if c not in item.siblings[k]]
                    if rivals:
                        values["margin"] = itm - float(max(rivals))
            if settings.itc:
                values["itc"] = float(scores["itc"][v])
            for name, value in values.items():
                per_sample[n][name].append(value)
                if item.paths[k] is not None:
                    rows[n][f"{item.paths[k]}.{field}_{name}"] = value
        for n, row in enumerate(rows):
            gathered = per_sample[n]
            row[field] = min(gathered["itm"]) if gathered["itm"] else None
            if settings.margin:
                row[f"{field}_margin"] = min(gathered["margin"]) if gathered["margin"] else None
            if settings.itc:
                row[f"{field}_itc"] = min(gathered["itc"]) if gathered["itc"] else None
        return rows

    return prepare, step


SCORE_MEANINGS = {
    "itm": "BLIP ITM probability that the image (or the label's crop) matches the label's text",
    "margin": "ITM probability of the label minus that of the best other class",
    "itc": "BLIP ITC cosine similarity of image and label text",
    "mistakenness": "likelihood that the label is wrong, from the BLIP scores (higher: more likely)",
    "flagged": "flagged as a likely mislabel",
}


def score_descriptions(label_field: str, kind: str, field: str, margin: bool, itc: bool) -> dict[str, str]:
    """What the match run's sample fields and per-label attributes hold."""
    names = ["itm"] + (["margin"] if margin else []) + (["itc"] if itc else [])
    sample = {field: f"lowest {SCORE_MEANINGS['itm']}, over the sample's {label_field!r} labels"}
    for name in names[1:]:
        sample[f"{field}_{name}"] = f"lowest {SCORE_MEANINGS[name]}, over the sample's {label_field!r} labels"
    paths = label_attribute_paths(label_field, kind, field, names)
    return {**sample, **{path: f"{SCORE_MEANINGS[name]} (this label)" for path, name in zip(paths, names)}}


def stored_label_paths(dataset, label_field: str, list_name: str, inputs: list[_Item]) -> list[_Item]:
    """Replaces the (sample id, label id) keys of list labels by their stored paths ("gt.detections.3").

    A label no longer stored (deleted since it was read) gets None: its
    scores count for its sample but are written nowhere.
    """
    sample_ids = sorted({key[0] for item in inputs for key in item.paths if key is not None})
    if not sample_ids:
        return inputs
    ids, stored = dataset.select(sample_ids).values(["id", f"{label_field}.{list_name}.id"])
    positions = {
        (sample_id, label_id): f"{label_field}.{list_name}.{i}"
        for sample_id, label_ids in zip(ids, stored)
        for i, label_id in enumerate(label_ids or [])
    }
    return [
        dataclasses.replace(item, paths=[None if key is None else positions.get(key) for key in item.paths])
        for item in inputs
    ]


def label_attribute_paths(label_field: str, kind: str, field: str, names) -> list[str]:
    """Embedded paths of per-label attributes, e.g. "gt.detections.gt_match_itm"."""
    if kind == "text":
        return []
    base = f"{label_field}.{_list_path(kind)}" if _list_path(kind) else label_field
    return [f"{base}.{field}_{name}" for name in names]


def declare_label_attributes(dataset, label_field: str, kind: str, field: str, names, field_type=None) -> None:
    """Declares per-label attributes in the dataset schema, so the App can filter on them."""
    import fiftyone as fo

    paths = label_attribute_paths(label_field, kind, field, names)
    schema_fields.declare(dataset, {path: field_type or fo.FloatField for path in paths}, "label QA", flat=True)


# --- flagging ------------------------------------------------------------------------------------------------


def mistakenness(itm=None, margin=None, itc=None, method: str = "itm+margin"):
    """Maps stored scores to a mistakenness score in [0, 1] (higher = more likely wrong).

    - "itm": 1 - p, p the ITM probability of the label;
    - "itc": (1 - cosine) / 2;
    - "itm+margin": (2 - p - margin) / 3, margin = p - p(best other class) in
      [-1, 1]; a label without a margin (a class outside the label set) is
      scored as if its margin were 0.

    Accepts numbers or arrays (None / NaN propagate as NaN).
    """
    if method == "itm":
        return 1.0 - _array(itm)
    if method == "itc":
        return (1.0 - _array(itc)) / 2.0
    if method == "itm+margin":
        margins = np.nan_to_num(_array(margin), nan=0.0)
        return (2.0 - _array(itm) - margins) / 3.0
    raise ValueError(f"`method` must be one of {METHODS[1:]}, got {method!r}")


def _array(values) -> np.ndarray:
    return np.asarray([np.nan if v is None else v for v in np.ravel(np.asarray(values, dtype=object))], dtype=float)


def select_flags(scores: np.ndarray, threshold=None, percentile=None, top_k=None) -> np.ndarray:
    """Which scores to flag (NaN never is): >= threshold, >= the percentile, or the top k."""
    given = [
        name for name, v in (("threshold", threshold), ("percentile", percentile), ("top_k", top_k)) if v is not None
    ]
    if len(given) != 1:
        raise ValueError(f"give exactly one of `threshold`, `percentile` or `top_k`, got {given or 'none'}")
    scores = np.asarray(scores, dtype=float)
    valid = ~np.isnan(scores)
    flags = np.zeros(len(scores), dtype=bool)
    if threshold is not None:
        if not 0 <= threshold <= 1:
            raise ValueError(f"`threshold` must be in [0, 1] (a mistakenness score), got {threshold}")
        flags[valid] = scores[valid] >= threshold
    elif percentile is not None:
        if not 0 <= percentile < 100:
            raise ValueError(f"`percentile` must be in [0, 100), got {percentile}")
        if valid.any():
            cut = np.percentile(scores[valid], percentile)
            flags[valid] = scores[valid] >= cut
    else:
        if not isinstance(top_k, int) or top_k < 1:
            raise ValueError(f"`top_k` must be an integer >= 1, got {top_k!r}")
        order = np.argsort(-np.where(valid, scores, -np.inf), kind="stable")
        flags[order[: min(top_k, int(valid.sum()))]] = True
    return flags


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


def flag(
    samples,
    label_field: str,
    field: str,
    method: str = "auto",
    threshold: float | None = None,
    percentile: float | None = None,
    top_k: int | None = None,
    level: str = "sample",
    tag: str = "mislabel",
    view_name: str | None = None,
) -> dict:
    """Flags likely mislabels from stored scores (no model needed); see `fiftyone_blip.flag_mislabels`."""
    from fiftyone import ViewField as F

    kind = label_kind(samples, label_field)
    if level not in LEVELS:
        raise ValueError(f"`level` must be one of {LEVELS}, got {level!r}")
    if level == "label" and kind == "text":
        raise ValueError("`level` 'label' needs a label field; a text field is flagged per sample")
    if not tag or not isinstance(tag, str):
        raise ValueError(f"`tag` must be a non-empty string, got {tag!r}")
    if field not in samples._dataset.get_field_schema():
        raise ValueError(f"no scores in {field!r}: run find_mislabels on {label_field!r} first")
    if field not in samples.get_field_schema():
        # a view that hides the scores (`select_fields`, `exclude_fields`): its samples, as stored
        samples = samples._dataset.select(samples.values("id"), ordered=True)
    method = resolve_method(method, kind, _last_settings(samples, field))
    select_flags(np.zeros(1), threshold, percentile, top_k)  # argument checks before any write
    score_field, flag_field = f"{field}_mistakenness", f"{field}_flagged"

    sample_scores, label_scores = _scores(samples, label_field, kind, field, method)
    if level == "label" and _list_path(kind) is not None:
        flat_scores = np.concatenate(label_scores) if len(label_scores) else np.zeros(0)
        flat_flags = select_flags(flat_scores, threshold, percentile, top_k)
        label_flags = np.split(flat_flags, np.cumsum([len(s) for s in label_scores])[:-1])
        sample_flags = np.array([bool(f.any()) for f in label_flags], dtype=bool)
    else:
        sample_flags = select_flags(sample_scores, threshold, percentile, top_k)
        label_flags = None

    ids = _write_sample_flags(samples, label_field, score_field, flag_field, sample_scores, sample_flags, tag)
    if kind != "text":
        _write_label_flags(samples, label_field, kind, field, ids, label_scores, sample_flags, label_flags)
        if level == "label":
            labels_view = samples.filter_labels(label_field, F(f"{field}_flagged") == True, only_matches=False)  # noqa: E712
            samples.untag_labels(tag, label_fields=[label_field])
            labels_view.tag_labels(tag, label_fields=[label_field])
    _describe_flags(samples._dataset, label_field, kind, field, method, tag)

    review = samples.match(F(flag_field) == True).sort_by(score_field, reverse=True)  # noqa: E712
    if level == "label" and _list_path(kind) is not None:
        review = review.filter_labels(label_field, F(f"{field}_flagged") == True)  # noqa: E712
    view_name = view_name or f"{field.replace('_', '-')}-review"
    samples._dataset.save_view(view_name, review, overwrite=True)
    return {
        "method": method,
        "flagged_samples": int(sample_flags.sum()),
        "flagged_labels": int(sum(int(f.sum()) for f in label_flags)) if label_flags is not None else None,
        "scored_samples": int((~np.isnan(np.asarray(sample_scores, dtype=float))).sum()),
        "total_samples": len(ids),
        "tag": tag,
        "view": view_name,
        "score_field": score_field,
        "flag_field": flag_field,
    }


def _scores(samples, label_field: str, kind: str, field: str, method: str):
    """(per-sample mistakenness, per-label mistakenness or None) from the stored scores."""
    names = {"itm": ["itm"], "itc": ["itc"], "itm+margin": ["itm", "margin"]}[method]
    if kind == "text":
        columns = samples.values([field] if method == "itm" else [f"{field}_itc"] if method == "itc" else [])
        return mistakenness(*_by_method(method, columns), method=method), None
    columns = samples.values(label_attribute_paths(label_field, kind, field, names))
    if _list_path(kind) is None:  # one label per sample
        label_scores = mistakenness(*_by_method(method, columns), method=method)
        return label_scores, label_scores
    lengths = [len(v) if v else 0 for v in columns[0]]
    flat = [[x for values in column for x in (values or [])] for column in columns]
    flat_scores = mistakenness(*_by_method(method, flat), method=method)
    label_scores = np.split(flat_scores, np.cumsum(lengths)[:-1]) if lengths else []
    sample_scores = np.array(
        [np.nanmax(s) if len(s) and not np.isnan(s).all() else np.nan for s in label_scores], dtype=float
    )
    return sample_scores, label_scores


def _write_sample_flags(samples, label_field, score_field, flag_field, sample_scores, sample_flags, tag: str) -> list:
    """Writes each sample's mistakenness and flag and re-tags the flagged samples; returns the ids.

    A re-run removes the tag only from samples this field's flags had tagged,
    and keeps it where another label field's flags (same tag) still hold: a
    tag this run did not set is never removed.
    """
    import fiftyone as fo
    from fiftyone import ViewField as F

    dataset = samples._dataset
    ids = samples.values("id")
    schema = dataset.get_field_schema()
    before = set(samples.match(F(flag_field) == True).values("id")) if flag_field in schema else set()  # noqa: E712
    schema_fields.declare(dataset, {score_field: fo.FloatField, flag_field: fo.BooleanField}, "label QA")
    app_config.group_fields(dataset, "match", (score_field, flag_field))
    samples.set_values(score_field, dict(zip(ids, _floats(sample_scores))), key_field="id")
    samples.set_values(flag_field, dict(zip(ids, sample_flags.tolist())), key_field="id")
    flagged = {i for i, f in zip(ids, sample_flags) if f}
    retag(samples, tag, before, flagged, held_by_others(samples, flag_field, tag))
    return ids


def held_by_others(samples, flag_field: str, tag: str) -> set[str]:
    """The samples that a label-QA flag field other than `flag_field`, with the same tag, flags:
    they keep the tag whatever `flag_field` says."""
    import fiftyone as fo
    from fiftyone import ViewField as F

    others = [
        name
        for name, field in samples._dataset.get_field_schema().items()
        if name != flag_field
        and isinstance(field, fo.BooleanField)
        and (field.info or {}).get("capability") == "flag"
        and (field.info or {}).get("tag", "mislabel") == tag
    ]
    return set(samples.match(F.any([F(name) == True for name in others])).values("id")) if others else set()  # noqa: E712


def retag(samples, tag: str, before, now, held=()) -> None:
    """Moves `tag` from the samples a run's flags had tagged (`before`) to those they tag `now`.

    A sample in `held` (flagged by another run with the same tag) keeps it, and a
    tag no run of this kind set (a user's own) is never removed.
    """
    samples.select(sorted(set(before) - set(now) - set(held))).untag_samples(tag)
    samples.select(sorted(now)).tag_samples(tag)


def _write_label_flags(samples, label_field, kind, field, ids, label_scores, sample_flags, label_flags) -> None:
    """Writes each label's mistakenness and flag as label attributes."""
    import fiftyone as fo

    dataset = samples._dataset
    base = f"{label_field}.{_list_path(kind)}" if _list_path(kind) else label_field
    declare_label_attributes(dataset, label_field, kind, field, ["mistakenness"])
    declare_label_attributes(dataset, label_field, kind, field, ["flagged"], fo.BooleanField)
    if _list_path(kind) is None:
        per_label_flags = sample_flags.tolist()
        values_scores = _floats(label_scores)
    else:
        per_label_flags = (
            [f.tolist() for f in label_flags]
            if label_flags is not None
            else [[bool(flagged)] * len(s) for flagged, s in zip(sample_flags, label_scores)]
        )
        values_scores = [_floats(s) for s in label_scores]
    # only samples that hold the label (a missing label has nothing to write on)
    present = set(samples.exists(label_field).values("id"))
    keep = [i for i, sample_id in enumerate(ids) if sample_id in present]
    samples.set_values(f"{base}.{field}_mistakenness", {ids[i]: values_scores[i] for i in keep}, key_field="id")
    samples.set_values(f"{base}.{field}_flagged", {ids[i]: per_label_flags[i] for i in keep}, key_field="id")


def _describe_flags(dataset, label_field: str, kind: str, field: str, method: str, tag: str) -> None:
    """Descriptions and info of the flag fields: the scores' model (from their field's info) and the method."""
    scores_info = dict(dataset.get_field(field).info or {})
    identity = {k: v for k, v in scores_info.items() if k not in ("written_by", "capability", "field", "fingerprint")}
    info = schema_fields.writer_info("flag", f"{field}_flagged", identity, scores=field, method=method, tag=tag)
    descriptions = {
        f"{field}_mistakenness": f"{SCORE_MEANINGS['mistakenness']} of the sample's {label_field!r} labels "
        f"(method {method!r}, the highest over its labels)",
        f"{field}_flagged": f"{SCORE_MEANINGS['flagged']} in {label_field!r} (method {method!r})",
    }
    names = ["mistakenness", "flagged"]
    paths = label_attribute_paths(label_field, kind, field, names)  # none for a text field
    descriptions.update({path: f"{SCORE_MEANINGS[name]} (this label)" for path, name in zip(paths, names)})
    schema_fields.describe(dataset, descriptions, info)


def _by_method(method: str, columns):
    if method == "itm":
        return (columns[0],)
    if method == "itc":
        return (None, None, columns[0])
    return columns[0], columns[1]


def _floats(values) -> list:
    return [None if v is None or np.isnan(v) else float(v) for v in np.asarray(values, dtype=float)]


def _last_settings(samples, field: str) -> dict | None:
    """Settings of the latest completed match run that wrote `field` on this dataset."""
    from fiftyone_blip import engine

    for record in reversed(engine.list_runs(samples._dataset)):
        if record.get("capability") == "match" and record.get("field") == field:
            return record.get("settings")
    return None


def run(samples, label_field: str, settings: MislabelSettings, options) -> dict:
    """Scores, then flags, the labels of `samples`; see `fiftyone_blip.find_mislabels`."""
    from fiftyone_blip import engine, models

    kind = label_kind(samples, label_field)
    field = settings.score_field(label_field)
    if field == label_field:
        raise ValueError(f"`field` must differ from `label_field` ({label_field!r})")
    name, _ = models.resolve_name(settings.model, "match")
    scoring = MatchSettings(
        kind=kind,
        template=default_template(name) if settings.template is None else settings.template,
        classes=settings.classes if settings.classes is not None else label_classes(samples, label_field, kind),
        margin=settings.margin,
        itc=settings.itc,
        crop_padding=default_crop_padding(name) if settings.crop_padding is None else settings.crop_padding,
        resize=options.resize,
        fast_decode=options.fast_decode,
    )
    resolve_method(settings.method, kind, {"margin": scoring.margin, "itc": scoring.itc})
    task = match_task(
        models.reference_for(settings.model, "match", options), scoring, label_field, field, samples._dataset
    )
    summary = engine.run(samples, task, options)
    return {"run": summary, **flag_with(samples, label_field, settings)}


def flag_with(samples, label_field: str, settings: FlagSettings) -> dict:
    """`flag` with the flagging part of `settings`; see `fiftyone_blip.flag_mislabels`."""
    threshold, percentile, top_k = settings.flag_values()
    return flag(
        samples,
        label_field,
        settings.score_field(label_field),
        method=settings.method,
        threshold=threshold,
        percentile=percentile,
        top_k=top_k,
        level=settings.level,
        tag=settings.tag,
        view_name=settings.view_name,
    )
