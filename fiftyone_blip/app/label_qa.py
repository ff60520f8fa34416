"""The label QA operator: score labels against their images, flag and tag the most suspicious."""

import fiftyone_blip
from fiftyone_blip import MislabelSettings
from fiftyone_blip.app.base import Form, ReviewOperator, default_model, engine_config
from fiftyone_blip.forms import check_nonempty, dropdown, nothing_to_run


def label_field_default(dataset, compatible):
    """The label field a form suggests: the first label field (Classification, Classifications,
    Detections), else the first caption-like text field; never a plain string such as `split`."""
    import fiftyone as fo

    schema = dataset.get_field_schema() if dataset is not None else {}
    labels = (fo.Classification, fo.Classifications, fo.Detections)
    for name in compatible:
        field = schema.get(name)
        if isinstance(field, fo.EmbeddedDocumentField) and issubclass(field.document_type, labels):
            return name
    return next((name for name in compatible if "caption" in name), compatible[0])


_FLAG_BY_LABELS = {"threshold": "Mistakenness threshold", "percentile": "Percentile", "top_k": "Top-k"}


class FindMislabels(ReviewOperator):
    settings_class = MislabelSettings

    @property
    def config(self):
        return engine_config(
            "find_mislabels",
            "BLIP: find mislabels",
            "Score how well labels, detections or captions match their images with BLIP; "
            "flag and tag the most suspicious for review",
        )

    def form(self, ctx, inputs, params):
        from fiftyone_blip import mislabels

        compatible = mislabels.compatible_fields(ctx.dataset) if ctx.dataset is not None else []
        if not compatible:
            nothing_to_run(
                inputs,
                "no_fields",
                "No label field to check",
                "The dataset has no Classification, Classifications, Detections or string field",
            )
            return None
        suggested = label_field_default(ctx.dataset, compatible)
        dropdown(inputs, "label_field", "Label field", {f: f for f in compatible}, default=suggested)
        label_field = params.get("label_field") or suggested
        kind = mislabels.label_kind(ctx.dataset, label_field) if label_field in compatible else "text"
        model = params.get("model") or default_model(ctx, "match")
        dropdown(inputs, "flag_by", "Flag by", _FLAG_BY_LABELS, default="threshold")

        def check_label_field():
            if label_field not in compatible:
                mislabels.label_kind(ctx.dataset, label_field)  # raises: a missing field, or what it holds
                raise ValueError(f"`label_field` {label_field!r} is not a label field (choose one of {compatible})")

        return Form(
            defaults={
                "model": default_model(ctx, "match"),
                "field": f"{label_field}_match",
                "template": mislabels.default_template(model),
            },
            models={"model": "match"},
            context={"kind": kind, "flag_by": params.get("flag_by") or "threshold"},
            checks=[lambda: check_nonempty(params, "tag"), check_label_field],
        )

    def planned_task(self, samples, params, settings, options):
        from fiftyone_blip import mislabels

        label_field = params.get("label_field")
        if not label_field or label_field not in mislabels.compatible_fields(samples):
            return None  # flagged at the label field's input
        return mislabels.task_for(samples, label_field, settings, options)

    def run(self, params, view, settings, options):
        return fiftyone_blip.find_mislabels(view, params["label_field"], settings, options)

    def message(self, result, settings):
        unscored = result["total_samples"] - result["scored_samples"]
        without = f"; {unscored} samples without a label were not scored" if unscored else ""
        suggested = (
            f"; {result['suggested_labels']} flagged labels have a suggested class (sidebar field "
            f"{result['suggested_field']!r}): apply it with BLIP: fix flagged labels"
            if result.get("suggested_labels")
            else ""
        )
        return (
            f"BLIP label QA: flagged {result['flagged_samples']} of {result['scored_samples']} samples "
            f"(tag {result['tag']!r}){without}; review view {result['view']!r}{suggested}"
        )
