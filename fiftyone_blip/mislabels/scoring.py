"""Label QA's scoring task: BLIP's ITM (and ITC) scores of labels, crops and captions, written on the engine."""

from __future__ import annotations

import dataclasses

import numpy as np

from fiftyone_blip import fields as schema_fields
from fiftyone_blip import images, review_views
from fiftyone_blip import run_records as runs
from fiftyone_blip.mislabels.settings import (
    PAIR_BATCH,
    MatchSettings,
    MislabelSettings,
    _list_path,
    default_crop_padding,
    default_template,
    label_classes,
    label_kind,
    resolve_method,
)

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
        pixels = [preprocess.from_image(images.crop(image, box, settings.crop_padding))[0] for box in boxes]
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
    attributes = dict.fromkeys(label_attribute_paths(label_field, settings.kind, field, names), fo.FloatField)
    suggests = suggests_classes(settings)
    if suggests:
        fields.update({f"{field}_suggested": fo.StringField, f"{field}_suggested_p": fo.FloatField})
        attributes.update(
            zip(
                label_attribute_paths(label_field, settings.kind, field, SUGGESTION_ATTRIBUTES),
                (fo.StringField, fo.FloatField, fo.StringField),
            )
        )
    return engine.Task(
        capability="match",
        field=field,
        fields=fields,
        settings={**settings.as_dict(), "label_field": label_field},
        identity=model.identity,
        bind=bind,
        reads=(label_field, "id"),
        # a margin or cosine can be missing where a label has none; a suggestion is there wherever a score
        # is (results scored before suggestions existed are completed by a re-run)
        required=(field, f"{field}_suggested") if suggests else (field,),
        label_attributes=attributes,
        siblings=tuple(f"{field}_{name}" for name in ("margin", "itc") if name not in names)
        + (() if suggests else (f"{field}_suggested", f"{field}_suggested_p")),
        descriptions=score_descriptions(label_field, settings.kind, field, settings.margin, settings.itc),
    )


# Per-label attributes of a suggestion: the best-matching class, its ITM probability, and the label as
# scored (`label_fixes` applies a suggestion only to a label that still reads so).
SUGGESTION_ATTRIBUTES = ("suggested", "suggested_p", "scored_label")


def suggests_classes(settings: MatchSettings) -> bool:
    """Whether a run stores suggested classes: class labels scored against every class (margins on)."""
    return settings.kind != "text" and settings.margin


def suggestion(row: np.ndarray, classes: list[str], label: str, siblings: set) -> tuple[str, float]:
    """The best-matching class of one label and its ITM probability, from its ITM row over `classes`.

    The sample's other labels (`siblings`, multi-label classifications) are not candidates: applying
    one would repeat a label the sample already holds.
    """
    candidates = [i for i, c in enumerate(classes) if c == label or c not in siblings]
    best = max(candidates, key=lambda i: row[i])
    return classes[best], float(row[best])


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
        suggested: dict[int, list[tuple]] = {n: [] for n in range(len(inputs))}  # (itm, class, p) per label
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
            if classes:
                suggested[n].append((values["itm"], *suggestion(row, classes, item.labels[k], item.siblings[k])))
                if item.paths[k] is not None:
                    named = zip(SUGGESTION_ATTRIBUTES, (*suggested[n][-1][1:], item.labels[k]))
                    rows[n].update({f"{item.paths[k]}.{field}_{name}": value for name, value in named})
        for n, row in enumerate(rows):
            gathered = per_sample[n]
            row[field] = min(gathered["itm"]) if gathered["itm"] else None
            if classes:  # the sample's: that of its least believed label, whose ITM probability `field` holds
                worst = min(suggested[n], key=lambda s: s[0]) if suggested[n] else (None, None, None)
                row[f"{field}_suggested"], row[f"{field}_suggested_p"] = worst[1:]
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
    "suggested": "the class of the label set that BLIP's ITM head matches best (the suggested label)",
    "suggested_p": "ITM probability of the suggested class",
    "scored_label": "the label as it was scored (a suggestion applies only while the label still reads so)",
}


def score_descriptions(label_field: str, kind: str, field: str, margin: bool, itc: bool) -> dict[str, str]:
    """What the match run's sample fields and per-label attributes hold."""
    names = ["itm"] + (["margin"] if margin else []) + (["itc"] if itc else [])
    sample = {field: f"lowest {SCORE_MEANINGS['itm']}, over the sample's {label_field!r} labels"}
    for name in names[1:]:
        sample[f"{field}_{name}"] = f"lowest {SCORE_MEANINGS[name]}, over the sample's {label_field!r} labels"
    if kind != "text" and margin:
        names += list(SUGGESTION_ATTRIBUTES)
        sample[f"{field}_suggested"] = f"{SCORE_MEANINGS['suggested']}, for the sample's least believed label"
        sample[f"{field}_suggested_p"] = f"{SCORE_MEANINGS['suggested_p']}, for the sample's least believed label"
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


def task_for(samples, label_field: str, settings: MislabelSettings, options):
    """The engine `Task` that scores `label_field` with these settings (its model not loaded)."""
    from fiftyone_blip import models

    samples, settings, options = scored_view(samples, label_field, settings, options)
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
    review_views.check(
        samples._dataset, settings.view_name or review_views.default_name(field), runs.run_key("match", field)
    )
    return match_task(
        models.reference_for(settings.model, "match", options), scoring, label_field, field, samples._dataset
    )


def scored_view(samples, label_field: str, settings: MislabelSettings, options):
    """(samples, settings, options) as label QA scores and flags them: a patches view's labels are the
    source's samples holding them, with `label_field` holding only them, and a `context` other than 1
    is the crop padding; any other collection as it is."""
    if not getattr(samples, "_is_patches", False):
        return samples, settings, options
    patches = samples
    if label_field not in patches._label_fields:
        raise ValueError(
            f"`label_field` {label_field!r} is not a label field of the patches view "
            f"({', '.join(patches._label_fields)})"
        )
    if options.context != 1:
        if settings.crop_padding is not None and settings.crop_padding != options.context:
            raise ValueError("give `context` or `crop_padding` on a patches view, not both: both grow the box")
        settings = dataclasses.replace(settings, crop_padding=options.context)
        options = dataclasses.replace(options, context=1.0)
    # the run's view: the source's samples holding these labels, each label field holding only them
    return patches._root_dataset.select_labels(ids=patches.values("id"), fields=label_field), settings, options
