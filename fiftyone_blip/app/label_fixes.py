"""The App operator that ends label QA in a fix: apply the suggested classes, undo them, or clear the flag tag.

One call into `fiftyone_blip` per mode (`apply_suggestions`, `undo_suggestions`,
`clear_flags`), on the operator's target: the selected samples, the current
view (the review view) or the dataset.
"""

import fiftyone.operators as foo
import fiftyone.operators.types as types

import fiftyone_blip
from fiftyone_blip import label_fixes
from fiftyone_blip.app.base import declared_params
from fiftyone_blip.forms import checked_form, dropdown, form_params, nothing_to_run

MODES = {
    "apply": "Apply the suggested class to the flagged labels",
    "undo": "Undo applied suggestions (restore the old class)",
    "clear": "Clear the flag tag (the labels stay as they are)",
}
ACTIONS = {
    "apply": fiftyone_blip.apply_suggestions,
    "undo": fiftyone_blip.undo_suggestions,
    "clear": fiftyone_blip.clear_flags,
}


class FixMislabels(foo.Operator):
    @property
    def config(self):
        return foo.OperatorConfig(
            name="fix_mislabels",
            label="BLIP: fix flagged labels",
            description="Apply the suggested class to flagged labels (undoable), or clear the flag tag",
            dynamic=True,
        )

    def resolve_input(self, ctx):
        inputs = types.Object()
        inputs.view_target(ctx)
        found = label_fixes.suggestion_fields(ctx.dataset) if ctx.dataset is not None else {}
        if not found:
            nothing_to_run(
                inputs, "no_suggestions", "No suggested labels", "Run BLIP: find mislabels on a class-label field first"
            )
            return types.Property(inputs, view=types.View(label="BLIP: fix flagged labels"))
        raw = form_params(ctx)
        label_field = raw.get("label_field") if raw.get("label_field") in found else next(iter(found))
        dropdown(inputs, "label_field", "Label field", {f: f for f in found}, default=label_field)
        # a field whose match run was deleted keeps its applied suggestions: undo is all it offers
        scores = found[label_field] or [f"{label_field}_match"]
        dropdown(inputs, "field", "Scores", {f: f for f in scores}, default=scores[0])
        modes = MODES if found[label_field] else {"undo": MODES["undo"]}
        dropdown(inputs, "mode", "Action", modes, default=next(iter(modes)))

        def check():
            if raw.get("field") not in (None, *scores):
                raise ValueError(f"`field` must be one of {scores} for {label_field!r}, got {raw.get('field')!r}")

        return checked_form(inputs, "BLIP: fix flagged labels", check, params=ctx.params)

    def execute(self, ctx):
        params = declared_params(self, ctx)
        mode = params.get("mode") or "apply"
        try:
            result = ACTIONS[mode](ctx.target_view(), params["label_field"], params.get("field"))
        except (KeyError, ValueError) as error:
            ctx.ops.notify(f"BLIP: fix flagged labels failed: {error}", variant="error")
            raise
        ctx.ops.reload_dataset()
        ctx.ops.notify(f"BLIP label QA: {label_fixes.summary(mode, result)}", variant="success")
        return result
