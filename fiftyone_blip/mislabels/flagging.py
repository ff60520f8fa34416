"""Label QA's flags: stored scores turned into mistakenness, flags, tags and the saved review view (no model)."""

from __future__ import annotations

import numpy as np

from fiftyone_blip import app_config, review_views
from fiftyone_blip import fields as schema_fields
from fiftyone_blip import run_records as runs
from fiftyone_blip.mislabels.scoring import SCORE_MEANINGS, declare_label_attributes, label_attribute_paths
from fiftyone_blip.mislabels.settings import (
    LEVELS,
    METHODS,
    FlagSettings,
    _list_path,
    label_kind,
    resolve_method,
)

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
            raise ValueError(f"`threshold` must be from 0 to 1 (a mistakenness score), got {threshold}")
        flags[valid] = scores[valid] >= threshold
    elif percentile is not None:
        if not 0 <= percentile < 100:
            raise ValueError(f"`percentile` must be from 0 and below 100, got {percentile}")
        if valid.any():
            cut = np.percentile(scores[valid], percentile)
            flags[valid] = scores[valid] >= cut
    else:
        if not isinstance(top_k, int) or top_k < 1:
            raise ValueError(f"`top_k` must be a whole number, at least 1, got {top_k!r}")
        order = np.argsort(-np.where(valid, scores, -np.inf), kind="stable")
        flags[order[: min(top_k, int(valid.sum()))]] = True
    return flags


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
    review_views.check(samples._dataset, view_name or review_views.default_name(field), runs.run_key("match", field))
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

    from fiftyone_blip import label_fixes

    suggested = label_fixes.count_suggestions(samples, label_field, kind, field)
    review = samples.match(F(flag_field) == True).sort_by(score_field, reverse=True)  # noqa: E712
    if level == "label" and _list_path(kind) is not None:
        review = review.filter_labels(label_field, F(f"{field}_flagged") == True)  # noqa: E712
    view_name = view_name or review_views.default_name(field)
    review_views.save(samples._dataset, view_name, review, runs.run_key("match", field))
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
        "suggested_labels": suggested,
        "suggested_field": f"{field}_suggested"
        if f"{field}_suggested" in samples._dataset.get_field_schema()
        else None,
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
