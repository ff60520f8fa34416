"""FiftyOne App operators for fiftyone-blip.

Each operator builds a form, checks it with the library's own validation, and
calls one `fiftyone_blip` function. Anything an operator does, a script can do.
"""

import queue
import threading

import fiftyone.core.fields as fo_fields
import fiftyone.operators as foo
import fiftyone.operators.types as types

import fiftyone_blip
from fiftyone_blip import captions, engine, models

_STRATEGY_LABELS = {
    "greedy": "Greedy",
    "beam": "Beam search",
    "diverse-beam": "Diverse beam search",
    "sample": "Sampling (top-k / top-p)",
}
_RESIZE_LABELS = {
    "squash": "Squash to square (BLIP default)",
    "center-crop": "Center crop",
    "letterbox": "Letterbox (pad)",
}


def _default_model(ctx):
    # The bundled model only knows shapes images; everything else gets Salesforce's.
    if ctx.dataset is not None and "shapes" in (ctx.dataset.info or {}):
        return "shapes-tiny"
    return "Salesforce/blip-image-captioning-base"


def _dropdown(inputs, name, label, choices, default, description=None):
    """An enum input shown as a dropdown; `choices` maps values to labels."""
    view = types.Dropdown(label=label, description=description)
    for value, choice_label in choices.items():
        view.add_choice(value, label=choice_label)
    inputs.enum(name, view.values(), default=default, view=view)


def _caption_settings(params):
    return captions.CaptionSettings(
        strategy=params.get("strategy", "greedy"),
        num_beams=params.get("num_beams") if params.get("strategy") in ("beam", "diverse-beam") else None,
        num_beam_groups=params.get("num_beam_groups", 2),
        top_k=params.get("top_k", 50),
        top_p=params.get("top_p", 1.0),
        temperature=params.get("temperature", 1.0),
        seed=params.get("seed", 0),
        min_new_tokens=params.get("min_new_tokens", 1),
        max_new_tokens=params.get("max_new_tokens", 30),
        repetition_penalty=params.get("repetition_penalty", 1.0),
        no_repeat_ngram_size=params.get("no_repeat_ngram_size", 0),
        prompt=params.get("prompt") or None,
    )


def _run_with_progress(ctx, work):
    """Runs `work(progress)` and reports progress where the App can see it.

    Delegated runs report through `ctx.set_progress`. Immediate runs can only
    talk to the App by yielding, so the work runs in a thread and this
    generator yields its progress messages.
    """
    if ctx.delegated:
        return work(lambda done, total: ctx.set_progress(done / max(total, 1), f"{done}/{total}"))
    messages = queue.Queue()
    outcome = {}

    def target():
        try:
            outcome["result"] = work(lambda done, total: messages.put((done, total)))
        except BaseException as error:  # re-raised in the operator's own thread
            outcome["error"] = error
        finally:
            messages.put(None)

    thread = threading.Thread(target=target, name="fiftyone-blip-operator", daemon=True)
    thread.start()
    while (message := messages.get()) is not None:
        done, total = message
        yield ctx.trigger("set_progress", dict(progress=done / max(total, 1), label=f"{done}/{total}"))
    thread.join()
    if "error" in outcome:
        raise outcome["error"]
    return outcome["result"]


class CaptionSamples(foo.Operator):
    @property
    def config(self):
        return foo.OperatorConfig(
            name="caption_samples",
            label="BLIP: caption samples",
            description="Caption images with BLIP into a string field, with a confidence beside it",
            dynamic=True,
            execute_as_generator=True,
            allow_immediate_execution=True,
            allow_delegated_execution=True,
        )

    def resolve_input(self, ctx):
        inputs = types.Object()
        inputs.view_target(ctx)
        inputs.str(
            "model",
            label="Model",
            default=_default_model(ctx),
            required=True,
            description="A hub id, a local directory, or shapes-tiny",
        )
        inputs.str("field", label="Caption field", default="caption", required=True)
        _dropdown(inputs, "strategy", "Decoding", _STRATEGY_LABELS, default="greedy")
        chosen = ctx.params.get("strategy", "greedy")
        if chosen in ("beam", "diverse-beam"):
            inputs.int("num_beams", label="Beams", default=3 if chosen == "beam" else 4, min=1, max=captions.MAX_BEAMS)
        if chosen == "diverse-beam":
            inputs.int("num_beam_groups", label="Beam groups", default=2, min=2)
        if chosen == "sample":
            inputs.int("top_k", label="Top-k", default=50, min=0)
            inputs.float("top_p", label="Top-p", default=1.0, min=0.0, max=1.0)
            inputs.float("temperature", label="Temperature", default=1.0)
            inputs.int("seed", label="Seed", default=0)
        inputs.int("min_new_tokens", label="Min new tokens", default=1, min=0, max=captions.MAX_NEW_TOKENS)
        inputs.int("max_new_tokens", label="Max new tokens", default=30, min=1, max=captions.MAX_NEW_TOKENS)
        inputs.float("repetition_penalty", label="Repetition penalty", default=1.0)
        inputs.int("no_repeat_ngram_size", label="No-repeat n-gram size", default=0, min=0)
        inputs.str(
            "prompt", label="Prompt", required=False, description="Text the caption continues, e.g. 'a picture of'"
        )
        _dropdown(inputs, "resize", "Resize", _RESIZE_LABELS, default="squash")
        inputs.int("batch_size", label="Batch size", default=16, min=1, max=1024)
        _dropdown(inputs, "device", "Device", {d: d for d in models.DEVICES}, default="auto")
        _dropdown(
            inputs,
            "dtype",
            "Precision",
            {d: d for d in models.DTYPES},
            default="auto",
            description="int8: dynamic quantization, fastest on CPU",
        )
        inputs.str(
            "shard",
            label="Shard (I/N)",
            required=False,
            description="Caption only shard I of N, for N delegated workers",
        )
        inputs.bool("overwrite", label="Recompute samples already captioned", default=False)
        _language_dropdown(inputs, ctx.params.get("model") or _default_model(ctx))

        # The library's own checks, so the form and the SDK agree on what is valid.
        try:
            _caption_settings(ctx.params)
            engine.check_run_options(
                ctx.params.get("field", "caption"), ctx.params.get("batch_size", 16), ctx.params.get("shard")
            )
        except ValueError as error:
            prop = inputs.view("invalid", types.Warning(label="Invalid settings", description=str(error)))
            prop.invalid = True
            prop.error_message = str(error)
        return types.Property(inputs, view=types.View(label="BLIP: caption samples"))

    def execute(self, ctx):
        params = ctx.params
        settings = _caption_settings(params)
        view = ctx.target_view()

        def work(progress):
            summary = fiftyone_blip.caption(
                view,
                model=params.get("model") or None,
                field=params.get("field", "caption"),
                resize=params.get("resize", "squash"),
                batch_size=params.get("batch_size", 16),
                device=params.get("device", "auto"),
                dtype=params.get("dtype", "auto"),
                shard=params.get("shard") or None,
                overwrite=params.get("overwrite", False),
                progress=progress,
                language=_chosen_language(params),
                **{k: v for k, v in vars(settings).items()},
            )
            return summary

        summary = yield from _run_with_progress(ctx, work)
        if not ctx.delegated:
            yield ctx.trigger("reload_dataset")
            yield ctx.trigger("notify", dict(message=f"BLIP captions: {summary}", variant="success"))


# --- language adapters ------------------------------------------------------------------------


def _language_dropdown(inputs, model):
    """English plus the installed adapters trained for `model`."""
    from fiftyone_blip import adapters

    choices = {"en": "English (no adapter)"}
    for manifest in adapters.installed_adapters(model):
        choices.setdefault(manifest["language"], f"{manifest['language']} (adapter)")
    _dropdown(inputs, "language", "Language", choices, default="en", description="Installed language adapters")


def _chosen_language(params):
    language = params.get("language") or "en"
    return None if language == "en" else language


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

        inputs = types.Object()
        inputs.view_target(ctx)
        inputs.str("language", label="Language code", required=True, description="e.g. de, ru, pt-BR")
        string_fields = []
        if ctx.dataset is not None:
            schema = ctx.dataset.get_field_schema(ftype=fo_fields.StringField)
            string_fields = sorted(name for name in schema if name not in ("filepath", "id"))
        if string_fields:
            default = next((f for f in string_fields if "caption" in f), string_fields[0])
            _dropdown(inputs, "caption_field", "Caption field", {f: f for f in string_fields}, default=default)
        else:
            inputs.str("caption_field", label="Caption field", required=True)
        inputs.str("model", label="Base model", default=_default_model(ctx), required=True)
        inputs.int("epochs", label="Most epochs", default=30, min=1)
        inputs.int("rank", label="LoRA rank", default=8, min=1, max=256)
        inputs.float("learning_rate", label="Learning rate", default=2e-3)
        inputs.int("batch_size", label="Batch size", default=64, min=1)
        inputs.bool("overwrite", label="Replace an installed adapter of this language", default=False)
        try:
            adapters.check_language(ctx.params.get("language") or "xx")
            adapters.AdapterTrainingSettings(
                rank=ctx.params.get("rank", 8),
                learning_rate=ctx.params.get("learning_rate", 2e-3),
                epochs=ctx.params.get("epochs", 30),
                batch_size=ctx.params.get("batch_size", 64),
            )
        except ValueError as error:
            prop = inputs.view("invalid", types.Warning(label="Invalid settings", description=str(error)))
            prop.invalid = True
            prop.error_message = str(error)
        return types.Property(inputs, view=types.View(label="BLIP: train a language adapter"))

    def execute(self, ctx):
        params = ctx.params
        manifest = fiftyone_blip.train_adapter(
            params["language"],
            samples=ctx.target_view(),
            caption_field=params["caption_field"],
            model=params.get("model") or None,
            epochs=params.get("epochs", 30),
            rank=params.get("rank", 8),
            learning_rate=params.get("learning_rate", 2e-3),
            batch_size=params.get("batch_size", 64),
            overwrite=params.get("overwrite", False),
            progress=lambda done, total: ctx.set_progress(done / max(total, 1), f"step {done}/{total}"),
            log=lambda line: None,
        )
        return {
            "language": manifest["language"],
            "path": manifest["path"],
            "held_out_exact_match": manifest["metrics"]["held_out_exact_match"],
            "trainable_parameters": manifest["parameters"]["trainable"],
        }


# --- end of language adapters --------------------------------------------------------------------


def register(p):
    p.register(CaptionSamples)
    p.register(TrainLanguageAdapter)
