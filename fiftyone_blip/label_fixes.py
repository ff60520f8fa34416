"""Label QA that ends in a fix: apply the suggested class to flagged labels, undo it, or clear the flag tag.

`find_mislabels` stores, beside the scores of a class label, the class of the
label set that BLIP's ITM head matches best (`{field}_suggested` on the
label, with its probability `{field}_suggested_p`) and the label as scored
(`{field}_scored_label`). Three rules act on that, each for the labels of a
collection (a view of selected samples, or a review view):

- `apply`: a flagged label whose suggestion differs takes the suggested class;
  its old class goes in `label_before_suggestion`, the class written in
  `suggestion_applied` and the time in `suggestion_applied_at`, on the label. A label edited since it was scored
  (it no longer reads as `{field}_scored_label`) is left alone and counted.
- `undo`: a label that still holds the suggestion it was given gets its old
  class back, and the three attributes go: the label is as it was before
  `apply`. It needs only those attributes, so it works after the match run
  is deleted or run again.
- `clear`: the flag tag leaves the flagged samples (and labels) of the
  collection; scores, flags and labels stay. A sample another label field's
  flags hold with the same tag keeps it.

Each takes the claim a match run into `{field}` holds, so none runs while the
scores are being written (and no run starts meanwhile).
"""

from __future__ import annotations

import datetime
import uuid

from fiftyone_blip import fields as schema_fields
from fiftyone_blip import mislabels

BEFORE = "label_before_suggestion"
APPLIED = "suggestion_applied"
APPLIED_AT = "suggestion_applied_at"
DESCRIPTIONS = {
    BEFORE: "the class this label held before its suggested class was applied (undo restores it)",
    APPLIED: "the suggested class applied to this label (undo restores the label while it still reads so)",
    APPLIED_AT: "when the suggested class was applied to this label",
}


def _checked(samples, label_field: str, field: str | None) -> tuple[str, str, str]:
    """(kind, score field, label path) of a class-label field holding suggestions; ValueError otherwise."""
    kind, field, base = _class_labels(samples, label_field, field)
    if f"{base}.{field}_suggested" not in samples._dataset.get_field_schema(flat=True):
        raise ValueError(
            f"no suggested labels in {label_field!r} for scores {field!r}: run find_mislabels on it first "
            "(with margins, the default)"
        )
    return kind, field, base


def _class_labels(samples, label_field: str, field: str | None) -> tuple[str, str, str]:
    """(kind, score field, label path) of a class-label field; ValueError for free text."""
    kind = mislabels.label_kind(samples, label_field)
    if kind == "text":
        raise ValueError(f"`label_field` {label_field!r} holds free text: suggested labels are for class labels")
    return kind, schema_fields.check_field_name(field or f"{label_field}_match"), _base(label_field, kind)


def _base(label_field: str, kind: str) -> str:
    """Where a field's labels are: "gt" for a Classification, "gt.detections" for a list."""
    (path,) = mislabels.label_attribute_paths(label_field, kind, "x", ["y"])
    return path.rsplit(".", 1)[0]


def suggestion_fields(samples) -> dict[str, list[str]]:
    """Class-label field -> the score fields that hold suggestions for it (`{field}_suggested` on its labels);
    a field with applied suggestions but no scores left (its run deleted) maps to [] (undo only)."""
    found: dict[str, list[str]] = {}
    schema = samples._dataset.get_field_schema(flat=True)
    for label_field in mislabels.compatible_fields(samples):
        kind = mislabels.label_kind(samples, label_field)
        if kind == "text":
            continue
        prefix = _base(label_field, kind) + "."
        if prefix + BEFORE in schema:
            found[label_field] = []
        for path in schema:
            name = path[len(prefix) :] if path.startswith(prefix) else ""
            if "." not in name and name.endswith("_suggested") and name != "_suggested":
                found.setdefault(label_field, []).append(name[: -len("_suggested")])
    return found


def count_suggestions(samples, label_field: str, kind: str, field: str) -> int:
    """How many flagged labels of `samples` have a suggested class other than their own (what `apply` would
    change, labels edited since the run included)."""
    from fiftyone import ViewField as F

    if kind == "text" or f"{_base(label_field, kind)}.{field}_suggested" not in samples._dataset.get_field_schema(
        flat=True
    ):
        return 0
    suggested = F(f"{field}_suggested")
    differs = (F(f"{field}_flagged") == True) & (suggested != None) & (suggested != F("label"))  # noqa: E711,E712
    return samples.filter_labels(label_field, differs).count(_base(label_field, kind))


def _labels(sample, label_field: str, kind: str) -> list:
    value = sample[label_field]
    if value is None:
        return []
    return [value] if kind == "classification" else list(value[mislabels._list_path(kind)] or [])


def _attribute(label, name: str):
    return label[name] if label.has_field(name) else None


def _label_ids(samples, base: str) -> dict:
    """Sample id -> ids of its labels in `samples` (a view's filtered labels are left out)."""
    ids, label_ids = samples.values(["id", f"{base}.id"])
    return {i: set(labels if isinstance(labels, list) else [labels]) - {None} for i, labels in zip(ids, label_ids)}


def _edit(samples, label_field: str, checked: tuple[str, str, str], change) -> dict:
    """Calls `change(label, field)` on each label of `samples`, under the claim on `field`, saving the
    samples it changed; `change` returns what it did ("applied", "restored", ...) or None. Counts each.
    `checked`: (kind, score field, label path), as `_checked` returns them."""
    from fiftyone_blip import run_records

    kind, field, base = checked
    dataset = samples._dataset
    wanted = _label_ids(samples, base)
    counts: dict[str, int] = {}
    lease = run_records.Lease(dataset, [field], None, f"label-fixes-{uuid.uuid4().hex}")
    lease.take()
    try:
        for sample in dataset.select(sorted(i for i, labels in wanted.items() if labels)).iter_samples(autosave=True):
            for label in _labels(sample, label_field, kind):
                if label.id in wanted[sample.id]:
                    outcome = change(label, field)
                    if outcome is not None:
                        counts[outcome] = counts.get(outcome, 0) + 1
    finally:
        lease.release()
    return {"label_field": label_field, "field": field, **counts}


def apply(samples, label_field: str, field: str | None = None) -> dict:
    """Applies the suggested class to the flagged labels of `samples`; see `fiftyone_blip.apply_suggestions`."""
    import fiftyone as fo

    kind, field, base = _checked(samples, label_field, field)
    types = {
        f"{base}.{BEFORE}": fo.StringField,
        f"{base}.{APPLIED}": fo.StringField,
        f"{base}.{APPLIED_AT}": fo.DateTimeField,
    }
    schema_fields.declare(samples._dataset, types, "apply_suggestions", flat=True)
    schema_fields.describe(samples._dataset, {f"{base}.{name}": text for name, text in DESCRIPTIONS.items()})
    when = datetime.datetime.now(datetime.timezone.utc)

    def change(label, field):
        suggested = _attribute(label, f"{field}_suggested")
        if not _attribute(label, f"{field}_flagged") or suggested is None or suggested == label.label:
            return None
        if _attribute(label, BEFORE) is not None:
            return "already_applied"
        if label.label != _attribute(label, f"{field}_scored_label"):
            return "edited"  # the user's edit since the run wins
        label[BEFORE], label[APPLIED], label[APPLIED_AT] = label.label, suggested, when
        label.label = suggested
        return "applied"

    checked = (kind, field, base)
    return {"applied": 0, "edited": 0, "already_applied": 0, **_edit(samples, label_field, checked, change)}


def undo(samples, label_field: str, field: str | None = None) -> dict:
    """Restores the labels `apply` changed in `samples`; see `fiftyone_blip.undo_suggestions`."""

    kind, field, base = _class_labels(samples, label_field, field)
    if f"{base}.{BEFORE}" not in samples._dataset.get_field_schema(flat=True):
        raise ValueError(f"no applied suggestions in {label_field!r} to undo (run find_mislabels, then apply them)")

    def change(label, field):
        before = _attribute(label, BEFORE)
        if before is None or _attribute(label, APPLIED_AT) is None:
            return None
        # labels applied before `suggestion_applied` was stored: the suggestion the run still holds
        applied = _attribute(label, APPLIED) or _attribute(label, f"{field}_suggested")
        if label.label != applied:
            return "edited"  # changed again since the suggestion was applied: the user's edit wins
        label.label = before
        for name in (BEFORE, APPLIED, APPLIED_AT):
            if label.has_field(name):
                label.clear_field(name)
        return "restored"

    return {"restored": 0, "edited": 0, **_edit(samples, label_field, (kind, field, base), change)}


def summary(mode: str, result: dict) -> str:
    """One line on what `apply`, `undo` or `clear` (`mode`) did and left alone: the CLI prints it, the App
    notifies it."""
    field = result["label_field"]
    if mode == "apply":
        return (
            f"applied the suggested class to {result['applied']} labels of {field!r}; "
            f"{result['edited']} edited since the run left as they are, {result['already_applied']} applied before"
        )
    if mode == "undo":
        return (
            f"restored {result['restored']} labels of {field!r}; "
            f"{result['edited']} changed since the suggestion was applied left as they are"
        )
    kept = f"; {result['kept_samples']} kept it (flagged in another field)" if result["kept_samples"] else ""
    return f"removed tag {result['tag']!r} from {result['cleared_samples']} samples and {result['cleared_labels']} labels{kept}"


def clear(samples, label_field: str, field: str | None = None) -> dict:
    """Removes the flag tag from the flagged samples and labels of `samples`; see `fiftyone_blip.clear_flags`."""
    from fiftyone import ViewField as F

    from fiftyone_blip import run_records

    kind = mislabels.label_kind(samples, label_field)
    field = schema_fields.check_field_name(field or f"{label_field}_match")
    flag_field = f"{field}_flagged"
    dataset = samples._dataset
    if flag_field not in dataset.get_field_schema():
        raise ValueError(f"no flags in {flag_field!r}: run find_mislabels on {label_field!r} first")
    tag = (dataset.get_field(flag_field).info or {}).get("tag", "mislabel")
    lease = run_records.Lease(dataset, [field], None, f"label-fixes-{uuid.uuid4().hex}")
    lease.take()
    try:
        flagged = samples.match(F(flag_field) == True).match_tags(tag).values("id")  # noqa: E712
        held = mislabels.held_by_others(samples, flag_field, tag)
        ids = [i for i in flagged if i not in held]
        labels = 0
        if kind != "text":
            tagged = samples.filter_labels(label_field, F(flag_field) & F("tags").contains(tag))
            labels = tagged.count_label_tags(label_fields=[label_field]).get(tag, 0)
            tagged.untag_labels(tag, label_fields=[label_field])
        samples.select(ids).untag_samples(tag)
    finally:
        lease.release()
    return {
        "label_field": label_field,
        "tag": tag,
        "cleared_samples": len(ids),
        "cleared_labels": labels,
        "kept_samples": len(flagged) - len(ids),
    }
