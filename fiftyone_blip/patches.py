"""Patches views: each object's crop goes through the model, its results land on the object's label.

A patches view (`dataset.to_patches(field)`, `dataset.to_evaluation_patches(key)`)
holds one sample per object, whose id is the object's label id. The engine
runs on it as on any view, with the label as its unit of work:

- a patch's model input is its object's box, grown by `context` around its
  center, cut from the image (`images.Region`) and fitted as a whole image is;
- results are attributes of the label in the source dataset
  (`ground_truth.detections.caption`, `..caption_confidence`), with the
  stamp and error beside them (`..caption_run`, `..caption_error`): one atomic
  update per label, then the same values on the view's own patch, so the
  view shows them without being made again;
- claims, resume, the refusal of values of others and the run record work
  per label as they do per sample (`engine.run`).

An evaluation patch holds a ground truth and its matched predictions; its
unit is the label whose id the patch has (the ground truth object, or an
unmatched prediction).
"""

from __future__ import annotations

import dataclasses
import re

# the label types whose objects a patch crops (FiftyOne makes patches of Detections, Polylines, Keypoints)
PATCH_LABEL_TYPES = ("Detections",)


@dataclasses.dataclass(frozen=True)
class Labels:
    """Where a patches run's results go: the source dataset's label fields and their stored labels.

    Attributes:
        fields: the label fields of the source the patches were made of (two
            for evaluation patches: ground truth, predictions).
        paths: each field's stored path of label documents ("gt.detections",
            or "gt" for a single `Detection`).
        context: each box grows by this factor around its center before the crop.
    """

    fields: tuple[str, ...]
    paths: tuple[str, ...]
    context: float = 1.0

    def attribute(self, field: str, name: str) -> str:
        """The stored path of attribute `name` of `field`'s labels ("gt.detections.caption")."""
        return f"{self.paths[self.fields.index(field)]}.{name}"

    def attributes(self, names) -> list[str]:
        """The stored paths of attributes `names` on every label field."""
        return [f"{path}.{name}" for path in self.paths for name in names]

    def is_list(self, field: str) -> bool:
        return self.paths[self.fields.index(field)] != field


def labels_of(samples, context: float) -> Labels | None:
    """The `Labels` a run on `samples` writes to: None for a collection of whole images.

    Raises:
        ValueError: patches of labels that are not boxes, or of video frames.
    """
    if not getattr(samples, "_is_patches", False):
        return None
    source = samples._root_dataset
    if source.media_type != "image":
        raise ValueError(f"patches of {source.media_type} samples are not supported: only of images")
    paths = []
    for field in samples._label_fields:
        label_type = source._get_label_field_type(field)
        if label_type.__name__ not in PATCH_LABEL_TYPES:
            raise ValueError(
                f"patches of {label_type.__name__} labels (field {field!r}) are not supported: "
                f"only {' and '.join(PATCH_LABEL_TYPES)}"
            )
        paths.append(source._get_label_field_root(field)[0])
    return Labels(tuple(samples._label_fields), tuple(paths), float(context))


def of_whole(samples) -> bool:
    """Whether a patches view holds every label of its field: `to_patches` of its whole dataset, no stage
    after (its foreign values are then counted in one query, without reading its ids)."""
    if not getattr(samples, "_is_patches", False) or samples._stages or len(samples._label_fields) != 1:
        return False  # an evaluation patch's unit is one of its labels: matched predictions are none
    source = samples._source_collection
    return source._root_dataset is samples._root_dataset and not source._serialize()


@dataclasses.dataclass(frozen=True)
class Place:
    """Where one label lives: its id, its sample's id (ObjectIds), its field, and whether the patch
    holds it in a list (an evaluation patch) or as the patch's own label."""

    label: object
    sample: object
    field: str
    in_list: bool

    def __str__(self) -> str:
        return str(self.label)


def find_label(doc: dict, labels: Labels) -> tuple[str, dict, bool] | None:
    """(field, label document, in a list) of the label whose id the patch `doc` has; None if gone."""
    for field in labels.fields:
        value = doc.get(field)
        if not isinstance(value, dict):
            continue
        in_list = "detections" in value
        for label in (value.get("detections") or []) if in_list else [value]:
            if isinstance(label, dict) and label.get("_id") == doc["_id"]:
                return field, label, in_list
    return None


def read_page(samples, labels: Labels, ids: list, extra: dict) -> dict:
    """The patches `ids` (ObjectIds) as the view holds them: the path, sample id and labels, and `extra`
    (a projection of the task's reads), by id."""
    project = {"filepath": 1, "_sample_id": 1, **{f: 1 for f in labels.fields}, **extra}
    stages = [{"$match": {"_id": {"$in": ids}}}, {"$project": project}]
    return {doc["_id"]: doc for doc in samples._aggregate(pipeline=stages)}


def place_of(doc: dict, labels: Labels) -> tuple[Place, list | None] | None:
    """The label of a patch `doc`: its `Place` and box; None when the patch no longer holds it."""
    found = find_label(doc, labels)
    if found is None:
        return None
    field, label, in_list = found
    return Place(doc["_id"], doc.get("_sample_id"), field, in_list), label.get("bounding_box")


# ---------------------------------------------------------------- stored values, read from the source


def _unwound(labels: Labels, field: str, label_ids: list | None) -> list[dict]:
    """Stages that give one document per label of `field` (of `label_ids`, None: all), as `_l`."""
    path = labels.paths[labels.fields.index(field)]
    match = {f"{path}._id": {"$in": label_ids}} if label_ids is not None else {f"{path}._id": {"$exists": True}}
    stages = [{"$match": match}, {"$project": {"_l": f"${path}"}}]
    if labels.is_list(field):
        stages.append({"$unwind": "$_l"})
    if label_ids is not None:
        stages.append({"$match": {"_l._id": {"$in": label_ids}}})
    return stages


def stored_results(dataset, task, label_ids: list) -> dict:
    """The stamp and whether the whole set is there, of the labels `label_ids`, as the source stores them, by id."""
    present = [{"$ne": [{"$ifNull": [f"$_l.{name}", None]}, None]} for name in task.done_fields]
    found = {}
    for field in task.labels.fields:
        stages = _unwound(task.labels, field, label_ids)
        stages.append(
            {"$project": {"_id": "$_l._id", task.run_field: f"$_l.{task.run_field}", "_has": {"$and": present}}}
        )
        found.update({doc["_id"]: doc for doc in dataset._sample_collection.aggregate(stages)})
    return found


def foreign_query(task, name: str, prefix: str) -> dict:
    """Labels (under `prefix`) whose `name` holds a value `task` would not own."""
    own = re.compile(f"^{task.fingerprint}(:|$)")
    return {f"{prefix}{name}": {"$ne": None}, f"{prefix}{task.run_field}": {"$not": own}}


def count_foreign(dataset, task, name: str, id_chunks) -> int:
    """How many labels of `id_chunks` (lists of label ObjectIds; a None chunk: every label of the fields)
    hold in `name` a value `task` would not own."""
    count = 0
    for ids in id_chunks:
        for field in task.labels.fields:
            stages = [*_unwound(task.labels, field, ids), {"$match": foreign_query(task, name, "_l.")}, {"$count": "n"}]
            count += sum(doc["n"] for doc in dataset._sample_collection.aggregate(stages))
    return count


def foreign_stamp(dataset, task, name: str) -> str:
    """The stamp of one label holding a value of others in `name` ("" when none or no stamp)."""
    for field in task.labels.fields:
        stages = [*_unwound(task.labels, field, None), {"$match": foreign_query(task, name, "_l.")}, {"$limit": 1}]
        for doc in dataset._sample_collection.aggregate(stages):
            return doc["_l"].get(task.run_field) or ""
    return ""


# ---------------------------------------------------------------- writes


def write_ops(labels: Labels, rows: dict, values, now) -> tuple[list, list]:
    """One update per label of the source (its sample's document, the label found by id) and one of
    the view's patch, setting the row's values (`values(row)`: name -> value) on the label."""
    from pymongo import UpdateOne

    source, mirror = [], []
    for place, row in rows.items():
        fields = values(row)
        path = labels.paths[labels.fields.index(place.field)]
        at = f"{path}.$" if labels.is_list(place.field) else path
        source.append(
            UpdateOne(
                {"_id": place.sample, f"{path}._id": place.label},
                {"$set": {**{f"{at}.{k}": v for k, v in fields.items()}, "last_modified_at": now}},
            )
        )
        where = {"_id": place.label}
        at = place.field
        if place.in_list:
            where[f"{place.field}.detections._id"] = place.label
            at = f"{place.field}.detections.$"
        mirror.append(UpdateOne(where, {"$set": {f"{at}.{k}": v for k, v in fields.items()}}))
    return source, mirror


def present(dataset, labels: Labels, places: list) -> set:
    """The ids of the labels of `places` that the source still holds."""
    ids = [place.label for place in places]
    found = set()
    for field in labels.fields:
        stages = [*_unwound(labels, field, ids), {"$project": {"_id": "$_l._id"}}]
        found.update(doc["_id"] for doc in dataset._sample_collection.aggregate(stages))
    return found
