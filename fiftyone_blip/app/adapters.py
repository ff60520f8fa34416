"""The language adapter operator: trains a LoRA adapter so that BLIP captions in another language."""

import fiftyone.core.fields as fo_fields
import fiftyone.operators as foo
import fiftyone.operators.types as types

import fiftyone_blip
from fiftyone_blip import AdapterJobSettings, AdapterTrainingSettings
from fiftyone_blip.app.base import app_params, declared_params, default_model
from fiftyone_blip.forms import advanced_section, checked_form, dropdown, form_params, setting_input, settings_inputs


class TrainLanguageAdapter(foo.Operator):
    @property
    def config(self):
        return foo.OperatorConfig(
            name="train_language_adapter",
            label="BLIP: train a language adapter",
            description="Fine-tune a LoRA adapter so that BLIP captions in another language",
            dynamic=True,
            allow_immediate_execution=False,
            allow_delegated_execution=True,
            default_choice_to_delegated=True,
        )

    def resolve_input(self, ctx):
        from fiftyone_blip import adapters

        inputs, advanced, params = types.Object(), types.Object(), form_params(ctx)
        inputs.view_target(ctx)
        inputs.str("language", label="Language code", required=True, description="e.g. de, ru, pt-BR")
        string_fields = []
        if ctx.dataset is not None:
            schema = ctx.dataset.get_field_schema(ftype=fo_fields.StringField)
            string_fields = sorted(name for name in schema if name not in ("filepath", "id"))
        if string_fields:
            default = next((f for f in string_fields if "caption" in f), string_fields[0])
            dropdown(inputs, "caption_field", "Caption field", {f: f for f in string_fields}, default=default)
        else:
            inputs.str("caption_field", label="Caption field", required=True)
        defaults = {"model": default_model(ctx, "caption")}
        settings_inputs(inputs, AdapterJobSettings, params, defaults=defaults, skip=("caption_field",))
        # the training recipe (LoRA rank, learning rate, epochs, ...) has working defaults: collapsed
        for field in AdapterTrainingSettings.fields("app"):
            setting_input(advanced, AdapterTrainingSettings, field)
        advanced_section(inputs, advanced)

        def check():
            adapters.check_language(params.get("language") or "xx")
            AdapterTrainingSettings.from_params(params)
            AdapterJobSettings.from_params(app_params(params))

        return checked_form(inputs, "BLIP: train a language adapter", check, params=ctx.params)

    def execute(self, ctx):
        params = declared_params(self, ctx)
        manifest = fiftyone_blip.train_adapter(
            params["language"],
            samples=ctx.target_view(),
            settings=AdapterTrainingSettings.from_params(params),
            job=AdapterJobSettings.from_params(params),
            progress=lambda done, total: ctx.set_progress(done / max(total, 1), f"step {done}/{total}"),
            log=lambda line: None,
        )
        return {
            "language": manifest["language"],
            "path": manifest["path"],
            "held_out_exact_match": manifest["metrics"]["held_out_exact_match"],
            "trainable_parameters": manifest["parameters"]["trainable"],
        }
