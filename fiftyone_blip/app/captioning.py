"""The captioning operators: caption samples, clean captions (CapFilt), evaluate captions."""

import fiftyone_blip
from fiftyone_blip import CapFiltSettings, CaptionEvalSettings, CaptionSettings
from fiftyone_blip.app.base import EngineOperator, Form, ReviewOperator, check_model, default_model, engine_config
from fiftyone_blip.forms import check_nonempty, check_text_field, dropdown, form_default, nothing_to_run


def _language_dropdown(inputs, model):
    """English plus the installed adapters trained for `model`."""
    from fiftyone_blip import adapters

    choices = {adapters.BASE_LANGUAGE: "English (no adapter)"}
    for manifest in adapters.installed_adapters(model):
        choices.setdefault(manifest["language"], f"{manifest['language']} (adapter)")
    field = CaptionSettings.declared("language")
    dropdown(
        inputs, "language", "Language", choices, default=adapters.BASE_LANGUAGE, description=field.metadata["help"]
    )


def _default_caption_field(language):
    """The caption field a language suggests; a bad language code is flagged at its own input."""
    from fiftyone_blip import captions

    try:
        return captions.default_field(language)
    except ValueError:
        return captions.default_field(None)


def forced_words_notice(inputs, field):
    """What forcing words costs, shown once the form has any (figures: BENCHMARKS.md, "Forced words")."""
    import fiftyone.operators.types as types

    from fiftyone_blip.captions import forced_field_of

    inputs.view(
        "force_words_notice",
        types.Notice(
            label=(
                "Forced words rewrite captions: every caption without them is written again around them, "
                "which takes about 3 to 4 times as long (measured on the shapes test images). Force a word "
                "the captions rarely hold and most captions are rewritten, some of them oddly (about 1 in 10 "
                'on the shapes test images, e.g. "a red square triangle"). The run counts the captions it '
                f"rewrote and marks them in {forced_field_of(field)!r}."
            )
        ),
    )


class CaptionSamples(EngineOperator):
    settings_class = CaptionSettings
    skip = ("language",)

    @property
    def config(self):
        return engine_config(
            "caption_samples",
            "BLIP: caption samples",
            "Caption images with BLIP into a string field, with a confidence beside it",
        )

    def form(self, ctx, inputs, params):
        from fiftyone_blip import adapters, captions

        strategy = params.get("strategy") or form_default(CaptionSettings, CaptionSettings.declared("strategy"))
        # the language comes first: the caption field it suggests follows it (caption_de for "de")
        _language_dropdown(inputs, params.get("model") or default_model(ctx, "caption"))
        defaults = {
            "model": default_model(ctx, "caption"),
            "num_beams": captions.DEFAULT_BEAMS.get(strategy),
            "field": _default_caption_field(params.get("language")),
        }
        checks = [
            lambda: check_text_field(ctx.dataset, "field", params.get("field"), must_exist=False),
            lambda: params.get("language") is None or adapters.check_language(params["language"]),
        ]
        if params.get("force_words"):
            forced_words_notice(inputs, params.get("field") or defaults["field"])
        return Form(defaults=defaults, checks=checks)

    def planned_task(self, samples, params, settings, options):
        from fiftyone_blip import captions

        return captions.task_for(settings, options)

    def run(self, params, view, settings, options):
        return fiftyone_blip.caption(view, settings, options)

    def message(self, summary, settings):
        return f"BLIP captions: {summary} (tick the field in the sidebar to see it on the grid)"


def caption_fields(dataset) -> list[str]:
    """The fields that can hold captions (strings, lists of strings, Classification(s)), built-ins and an
    engine run's own `_error` / `_run` fields left out."""
    from fiftyone_blip import caption_eval

    if dataset is None:
        return []
    names = []
    schema = dataset.get_field_schema()
    for name in schema:
        stem, _, suffix = name.rpartition("_")
        if name in ("filepath", "id", "tags", "split") or (suffix in ("error", "run", "origin") and stem in schema):
            continue
        try:
            caption_eval.check_text_field(dataset, name, "field")
        except ValueError:
            continue
        names.append(name)
    return names


def _field_dropdown(inputs, name, label, fields, suggested):
    """A dropdown of the caption fields; False (and the form marked invalid) where there is none."""
    if not fields:
        nothing_to_run(inputs, name, "No caption field", "The dataset has no text field")
        return False
    dropdown(inputs, name, label, {f: f for f in fields}, default=suggested)
    return True


class CleanCaptions(ReviewOperator):
    settings_class = CapFiltSettings

    @property
    def config(self):
        return engine_config(
            "clean_captions",
            "BLIP: clean captions",
            "CapFilt: write new captions, score them and the existing ones by how well they match the image, keep "
            "the best and flag the images whose caption the filter rejects",
        )

    def form(self, ctx, inputs, params):
        fields = caption_fields(ctx.dataset)
        suggested = next((f for f in fields if "caption" in f), fields[0] if fields else None)
        _field_dropdown(inputs, "caption_field", "Captions to clean", fields, suggested)
        inputs.str("out_field", label="Field for the kept caption", default="capfilt", required=True)
        return Form(
            defaults={"caption_model": default_model(ctx, "caption"), "match_model": default_model(ctx, "match")},
            models={"caption_model": "caption", "match_model": "match"},
            checks=[lambda: check_nonempty(params, "out_field")],
        )

    def planned_task(self, samples, params, settings, options):
        from fiftyone_blip import caption_filter

        if not check_model(params.get("match_model"), "match") or not params.get("caption_field"):
            return None  # a hub matcher is checked when the run starts (see `check_run`)
        out_field = params.get("out_field") or "capfilt"
        return caption_filter.task_for(samples, params["caption_field"], out_field, settings, options)

    def run(self, params, view, settings, options):
        return fiftyone_blip.capfilt(
            view, params["caption_field"], params.get("out_field") or "capfilt", settings, options
        )

    def message(self, result, settings):
        return (
            f"BLIP CapFilt: rejected the original caption of {result['flagged_samples']} of "
            f"{result['total_samples']} samples (tag {result['tag']!r}); kept captions in {result['field']!r}; "
            f"review view {result['view']!r}"
        )


class EvaluateCaptions(ReviewOperator):
    settings_class = CaptionEvalSettings

    @property
    def config(self):
        return engine_config(
            "evaluate_captions",
            "BLIP: evaluate captions",
            "Score captions against reference captions (BLEU, ROUGE-L, CIDEr-D) and by how well they match their images",
        )

    def form(self, ctx, inputs, params):
        fields = caption_fields(ctx.dataset)
        predicted = next((f for f in fields if f.startswith("caption")), fields[0] if fields else None)
        reference = next((f for f in fields if f.startswith("gt")), fields[-1] if fields else None)
        _field_dropdown(inputs, "pred_field", "Predicted captions", fields, predicted)
        _field_dropdown(inputs, "gt_field", "Reference captions", fields, reference)
        inputs.str("eval_key", label="Evaluation key", default="eval", required=True)
        return Form(
            defaults={"model": default_model(ctx, "match")},
            models={"model": "match"},
            checks=[lambda: check_nonempty(params, "eval_key")],
        )

    def planned_task(self, samples, params, settings, options):
        from fiftyone_blip import caption_eval

        if not params.get("pred_field") or not params.get("gt_field"):
            return None
        eval_key = params.get("eval_key") or "eval"
        return caption_eval.task_for(samples, params["pred_field"], params["gt_field"], eval_key, settings, options)

    def run(self, params, view, settings, options):
        return fiftyone_blip.evaluate_captions(
            view, params["pred_field"], params["gt_field"], params.get("eval_key") or "eval", settings, options
        )

    def message(self, result, settings):
        from fiftyone_blip.caption_metrics import METRIC_NAMES

        names = {**METRIC_NAMES, "itm": "match"}
        figures = ", ".join(f"{names[k]} {v:.3f}" for k, v in result["corpus"].items() if v is not None)
        return f"BLIP caption evaluation of {result['samples']} samples: {figures}; review view {result['view']!r}"
