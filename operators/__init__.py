"""FiftyOne App operators for fiftyone-blip.

Each operator builds its form from the settings dataclasses (default, bounds,
choices and help come from there), checks it with the library's own
validation, and its `execute` is one `fiftyone_blip` call. Anything an
operator does, a script can do.
"""

import dataclasses
import json
import os
import queue
import re
import threading
from pathlib import Path

import fiftyone.core.fields as fo_fields
import fiftyone.operators as foo
import fiftyone.operators.types as types

import fiftyone_blip
from fiftyone_blip import (
    AdapterJobSettings,
    AdapterTrainingSettings,
    CapFiltSettings,
    CaptionEvalSettings,
    CaptionSettings,
    EmbedSettings,
    HeatmapSettings,
    MislabelSettings,
    RunOptions,
    SearchSettings,
    VqaSettings,
    models,
)
from fiftyone_blip import fields as result_fields
from fiftyone_blip.settings import check_value, form_default, form_shows, label_of

from . import label_fixes


def default_model(ctx, task):
    """The form's model: the bundled one on a shapes dataset (it knows only shapes), else Salesforce's."""
    if ctx.dataset is not None and "shapes" in (ctx.dataset.info or {}):
        return "shapes-tiny"
    return models.DEFAULT_MODELS[task]


APP_ROOT_ENV = "FIFTYONE_BLIP_APP_ROOT"
_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")


def _app_root():
    """The server folder under which App forms may name paths (None: unset, no paths from the App)."""
    root = os.environ.get(APP_ROOT_ENV)
    return Path(root).expanduser().resolve() if root else None


def under_app_root(value) -> str | None:
    """The one confinement rule for every server path an App request names: `value` resolved under
    the App root (links followed), or None where there is no root or it would land outside.

    The App runs as the server, not as the user: a form may reach no other server folder.
    """
    root = _app_root()
    if root is None:
        return None
    path = (root / str(value).strip()).resolve()
    return str(path) if path.is_relative_to(root) else None


def _app_folder(value, name):
    """A folder from a form, confined to the App root (see `under_app_root`)."""
    if not value or not str(value).strip():
        return None
    if _app_root() is None:
        raise ValueError(f"`{name}` is not available in the App: the server sets {APP_ROOT_ENV} to allow folders")
    path = under_app_root(value)
    if path is None:
        raise ValueError(f"`{name}` must be a folder under {str(_app_root())!r}, got {value!r}")
    return path


def _app_model(value):
    """A model from a form: a bundled name, a folder under the App root, or a hub id. Any other server
    path is refused with the same message whether it exists or not. A hub id is loaded from the
    hub only (`models.HubId`), never from a server folder of that name outside the root."""
    if not value or not str(value).strip():
        return None
    value = str(value).strip()
    if value in models.BUNDLED:
        return value
    root, path = _app_root(), under_app_root(value)
    if path is not None and Path(path).is_dir():
        return path  # a model folder under the root ("models/captioner" too)
    if _HUB_ID.match(value) and ".." not in value:
        return models.HubId(value)
    if path is not None:
        return path  # under the root, not there: the loader says so
    where = f", or a folder under {str(root)!r}" if root is not None else ""
    raise ValueError(
        f"`model` must be {', '.join(models.BUNDLED)} or a hub id like Salesforce/blip-itm-base-coco{where}; "
        f"got {value!r}"
    )


def _default_caption_field(language):
    """The caption field a language suggests; a bad language code is flagged at its own input."""
    from fiftyone_blip import captions

    try:
        return captions.default_field(language)
    except ValueError:
        return captions.default_field(None)


def app_params(params: dict) -> dict:
    """A form's params with the server paths it names confined (see `_app_model`, `_app_folder`); the
    library and the CLI take any path, as they run as the user."""
    params = dict(params or {})
    for name in ("model", "caption_model", "match_model"):
        if params.get(name):
            params[name] = _app_model(params[name])
    if params.get("maps_dir"):
        params["maps_dir"] = _app_folder(params["maps_dir"], "maps_dir")
    return params


def declared_params(operator, ctx) -> dict:
    """What an operator's `execute` reads: the params of the inputs its form declares for this request
    (collapsed sections flattened), with the server paths they name confined (`app_params`).

    A request can send any params (a script, a crafted call to the server); one the form does not
    show (the library's `out`, `images_dir`, ...) is dropped here, so it never reaches the library.
    """
    declared = form_sections(operator.resolve_input(ctx).type)
    return app_params({name: value for name, value in form_params(ctx).items() if name in declared})


def _dropdown(inputs, name, label, choices, default, description=None):
    """An enum input shown as a dropdown; `choices` maps values to labels."""
    view = types.Dropdown(label=label, description=description)
    for value, choice_label in choices.items():
        view.add_choice(value, label=choice_label)
    inputs.enum(name, view.values(), default=default, view=view)


def setting_input(inputs, cls, field, default=dataclasses.MISSING):
    """One form input from a settings field: its label, help, default, choices and bounds."""
    meta = field.metadata
    default = form_default(cls, field) if default is dataclasses.MISSING else default
    label, description = label_of(field), meta.get("help") or None
    choices = meta.get("choices")
    labels = meta.get("choice_labels") or {}
    if choices is None and labels:
        choices = tuple(labels)
    if choices is not None:
        _dropdown(inputs, field.name, label, {c: labels.get(c, c) for c in choices}, default, description)
        return
    kind = str(field.type).split("|")[0].strip()
    bounds = {k: meta[k] for k in ("min", "max") if meta.get(k) is not None}
    if isinstance(default, bool) or kind == "bool":
        inputs.bool(field.name, label=label, default=default, description=description)
    elif kind == "int":
        inputs.int(field.name, label=label, default=default, description=description, **bounds)
    elif kind == "float":
        inputs.float(field.name, label=label, default=default, description=description, **bounds)
    else:
        inputs.str(field.name, label=label, default=default, required=False, description=description)


# The forms show the essentials first; the settings declared `advanced` (batch size, device,
# precision, shard, token limits, ...) sit in one collapsed section, as Voxel51's own plugins do.
# FiftyOne nests a section's values under its name in the params: `form_params` flattens them.
ADVANCED = "advanced"
ADVANCED_LABEL = "Advanced settings"


def form_params(params) -> dict:
    """A form's params with the values of its collapsed sections brought to the top (a context or a dict).

    Scripts pass every setting at the top (`params=dict(batch_size=8)`); the
    App nests the advanced ones under `advanced`. Both read the same here.
    """
    params = dict(getattr(params, "params", params) or {})
    section = params.pop(ADVANCED, None)
    return {**params, **section} if isinstance(section, dict) else params


def form_sections(inputs) -> dict:
    """Every input of a form by name, those of its collapsed sections included: {name: (owner, Property)}."""
    found = {}
    for name, prop in inputs.properties.items():
        if isinstance(prop.type, types.Object) and isinstance(prop.view, types.ObjectView):
            for inner, inner_prop in prop.type.properties.items():
                found[inner] = (prop, inner_prop)
        else:
            found[name] = (None, prop)
    return found


def advanced_section(inputs, advanced, expanded=False):
    """Adds the collapsed "Advanced settings" section holding `advanced`'s inputs (none: nothing)."""
    if advanced.properties:
        view = types.ObjectView(label=ADVANCED_LABEL, collapsible=True, default_expanded=expanded)
        inputs.define_property(ADVANCED, advanced, view=view)


def settings_inputs(inputs, cls, params, defaults=None, skip=(), context=None, advanced=None):
    """The form inputs of every App field of `cls` that the form shows for `params` (and `context`).

    Fields declared `advanced` go into `advanced` (an Object) when it is given.
    """
    defaults, shown = defaults or {}, {**(context or {}), **params}
    for field in cls.fields("app"):
        if field.name not in skip and form_shows(field, shown):
            into = advanced if advanced is not None and field.metadata.get("advanced") else inputs
            setting_input(into, cls, field, defaults.get(field.name, dataclasses.MISSING))


def run_inputs(inputs, cls, advanced=None):
    """The `RunOptions` inputs, with `cls`'s run defaults (heatmaps step 8 images at a time)."""
    owner = type("RunOptions", (RunOptions,), {"run_defaults": cls.run_defaults})
    for field in RunOptions.fields("app"):
        into = advanced if advanced is not None and field.metadata.get("advanced") else inputs
        setting_input(into, owner, field)


def run_options(params, cls, progress):
    return RunOptions.from_params({**cls.run_defaults, **form_params(params)}, progress=progress)


def check_settings(ctx, cls, params=None):
    """The library's own checks of a form: its run options, then its settings (returned)."""
    run_options(ctx, cls, None)
    return cls.from_params(app_params(form_params(ctx) if params is None else params))


def field_checks(params, *classes):
    """One check per form value against its setting's bounds and choices, so each input is judged alone."""
    checks = []
    for cls in classes:
        for field in cls.fields("app"):
            value = params.get(field.name)
            if value is None or value == "" or not form_shows(field, params):
                continue
            if cls is RunOptions:  # each run option checks alone (the shard's I/N form too)
                checks.append(lambda name=field.name, value=value: RunOptions(**{name: value}))
            else:
                checks.append(lambda name=field.name, value=value, meta=field.metadata: check_value(name, value, meta))
    return checks


_QUOTED_NAME = re.compile(r"`([A-Za-z_][A-Za-z0-9_]*)`")
_WORD = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def _input_named(names, message):
    """The form input a library message is about: the first `name` in backquotes, else the first input it names."""
    for name in _QUOTED_NAME.findall(message) + _WORD.findall(message):
        if name in names and name != "view_target":
            return name
    return None


def schedule_note(inputs):
    """The form's note on scheduling: what "Schedule" needs, and where to see its runs."""
    inputs.view("schedule_note", types.Notice(label=SCHEDULE_NOTE))


def checked_form(inputs, label, *checks, params=None):
    """The form, with each failed check's message at the input it names (invalid), as @voxel51/brain does.

    Every check runs (a form shows all its errors at once); a check is a
    callable that raises ValueError (or `ModelLoadError`) with the library's
    own message. The message shows under the input, with the input's label
    for the parameter's name, inside the collapsed section too (which then
    opens). A message that names no input of the form is shown as a notice
    at the form's end. `params` are the raw params (a section the App has not
    sent yet cannot show its inputs' errors: the section itself is marked).
    """
    sections = form_sections(inputs)
    flagged, notices = set(), []
    for check in checks:
        try:
            check()
        except (ValueError, models.ModelLoadError) as error:
            message = str(error)
            name = _input_named(sections, message)
            if name is None:
                notices.append(message)
            elif name not in flagged:
                flagged.add(name)
                section, prop = sections[name]
                field_label = getattr(prop.view, "label", None) or name
                prop.invalid = True
                prop.error_message = message.replace(f"`{name}`", field_label)
                if section is not None:
                    section.view = types.ObjectView(label=section.view.label, collapsible=True, default_expanded=True)
                    if not isinstance((params or {}).get(ADVANCED), dict) and not section.invalid:
                        # FiftyOne checks a section's inputs only when the params hold the section:
                        # a script's flat params get the error at the section, in the parameter's name
                        section.invalid = True
                        section.error_message = message
    if notices:
        prop = inputs.view("invalid", types.Warning(label="Invalid settings", description=notices[0]))
        prop.invalid = True
        prop.error_message = notices[0]
    return types.Property(inputs, view=types.View(label=label))


def check_model(name, task, revision=None):
    """Checks a model name without loading it: bundled, a hub id `org/name`, or a folder under the App
    root (see `_app_model`: any other server path is refused alike, whether it exists or not); and
    that a `revision` goes with a hub model only."""
    if not name:
        return None
    name = _app_model(name)
    _, local = models.resolve_name(name, task)  # raises for a folder that does not exist
    models.check_revision_applies(name, task, revision)
    return local


def check_text_field(dataset, param, name, must_exist):
    """Checks that `name` is (or can become) a text field of `dataset`; `param` is the form input."""
    if dataset is None or not name:
        return
    field = dataset.get_field_schema().get(name)
    if field is None:
        if must_exist:
            raise ValueError(f"`{param}` {name!r} is not a field of dataset {dataset.name!r}")
        return
    if not isinstance(field, fo_fields.StringField):
        kind = getattr(field, "document_type", None)
        kind = kind.__name__ if kind is not None else type(field).__name__
        raise ValueError(f"`{param}` {name!r} holds {kind} values, not text: choose a text field")


def check_nonempty(params, name):
    """A text input cleared in the form: the library would take its default, so say it instead."""
    value = params.get(name)
    if value is not None and not str(value).strip():
        raise ValueError(f"`{name}` must not be empty")


def _engine_config(name, label, description):
    """An operator that runs on the engine: a dynamic form, progress as it goes, immediate or delegated."""
    return foo.OperatorConfig(
        name=name,
        label=label,
        description=description,
        dynamic=True,
        execute_as_generator=True,
        allow_immediate_execution=True,
        allow_delegated_execution=True,
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


def _notify(ctx, message):
    """The tail of an immediate run: reload the dataset and say what was done."""
    if not ctx.delegated:
        yield ctx.trigger("reload_dataset")
        yield ctx.trigger("notify", dict(message=message, variant="success"))


def failure_reason(error) -> str:
    """The one-line reason of a failed run: the first line of the error's message."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return lines[0] if lines else type(error).__name__


def _notify_failure(ctx, label, error):
    """Tells the App a run failed, and why.

    FiftyOne drops an exception raised in a generator `execute` (one that
    reports progress): the form closes and the App shows nothing. So an
    immediate run sends the notification itself; the caller re-raises, which
    a delegated run's operation records as its failure.
    """
    if not ctx.delegated:
        yield ctx.trigger("notify", dict(message=f"{label} failed: {failure_reason(error)}", variant="error"))


# Above this many target samples a run is offered as "Schedule" (delegated) first; "Execute" stays
# available. Immediate runs stop after `fo.config.operator_timeout` (600 s): BLIP-base captions
# about 1.4 images/s on a small CPU, so 500 images is near that limit.
DELEGATE_ABOVE = 500

SCHEDULE_NOTE = (
    "**Schedule** runs this in the background: the App must run with "
    "`FIFTYONE_ALLOW_LEGACY_ORCHESTRATORS=true` and a `fiftyone delegated launch` must be running "
    "(`fiftyone-blip app DATASET` starts both); `fiftyone delegated list` shows the queued and finished runs."
)


def target_size(ctx) -> int:
    try:
        return len(ctx.target_view())
    except Exception:  # no dataset yet: nothing to decide
        return 0


class EngineOperator(foo.Operator):
    """An operator that runs one capability on the engine.

    A subclass sets `settings_class`, builds its form in `resolve_input` and
    says which SDK function to call (`run`) and what to tell the App after
    (`message`); `execute` is the same for all: the settings from the form,
    one SDK call with progress, then a notice.
    """

    settings_class = None

    def resolve_execution_options(self, ctx):
        """Both ways to run; scheduling is the suggested one above `DELEGATE_ABOVE` samples."""
        from fiftyone.operators.executor import ExecutionOptions

        return ExecutionOptions(
            allow_immediate_execution=True,
            allow_delegated_execution=True,
            default_choice_to_delegated=target_size(ctx) > DELEGATE_ABOVE,
        )

    def run(self, params, view, settings, options):
        """The SDK call; `params` are the form's declared params (`declared_params`)."""
        raise NotImplementedError

    def planned_task(self, params, settings, options):
        """The engine `Task` the run would start (see `check_run`); None: the form checks no run ahead."""
        return None

    def check_run(self, ctx, params, model_param="model", task="caption"):
        """The engine's own preflight of the run this form would start, before Execute: a field that holds
        values of others (a user's, or a run with other settings: which ones differ), a field of another
        type. Shown at the input it names, so Execute stays disabled until "Recompute" or another field
        is chosen. Only for models on this server (bundled or a folder): a hub model would be fetched at
        every keystroke, and is checked when the run starts."""
        from fiftyone_blip import engine

        name = params.get(model_param) or default_model(ctx, task)
        try:
            if ctx.dataset is None or not check_model(name, task):
                return
        except (ValueError, models.ModelLoadError):
            return  # flagged at the model input
        params = {**params, model_param: name}
        try:
            settings = self.settings_class.from_params(app_params(params))
            options = run_options(params, self.settings_class, None)
            planned = self.planned_task(params, settings, options)
        except (ValueError, models.ModelLoadError):
            return  # flagged by the form's other checks
        if planned is not None:
            engine.preflight(ctx.target_view(), planned, options)

    def message(self, result, settings) -> str:
        raise NotImplementedError

    def execute(self, ctx):
        try:
            params = declared_params(self, ctx)
            settings, view = self.settings_class.from_params(params), ctx.target_view()
            result = yield from _run_with_progress(
                ctx,
                lambda progress: self.run(params, view, settings, run_options(params, self.settings_class, progress)),
            )
        except Exception as error:
            yield from _notify_failure(ctx, self.config.label, error)
            raise
        yield from _notify(ctx, self.message(result, settings))
        return result


class ReviewOperator(EngineOperator):
    """An engine operator whose run saves a review view (`result["view"]`), shown once an immediate run ends."""

    def execute(self, ctx):
        result = yield from super().execute(ctx)
        if not ctx.delegated:
            # Open the review view by its stages: the App looks a view name up in the saved views
            # it fetched with the page, which do not hold the one this run just saved, so
            # `set_view(name=...)` would fail there.
            yield ctx.ops.set_view(view=ctx.dataset.load_saved_view(result["view"]))
        return result


def _language_dropdown(inputs, model):
    """English plus the installed adapters trained for `model`."""
    from fiftyone_blip import adapters

    choices = {adapters.BASE_LANGUAGE: "English (no adapter)"}
    for manifest in adapters.installed_adapters(model):
        choices.setdefault(manifest["language"], f"{manifest['language']} (adapter)")
    field = CaptionSettings.declared("language")
    _dropdown(
        inputs, "language", "Language", choices, default=adapters.BASE_LANGUAGE, description=field.metadata["help"]
    )


class CaptionSamples(EngineOperator):
    settings_class = CaptionSettings

    @property
    def config(self):
        return _engine_config(
            "caption_samples",
            "BLIP: caption samples",
            "Caption images with BLIP into a string field, with a confidence beside it",
        )

    def resolve_input(self, ctx):
        from fiftyone_blip import captions

        inputs, advanced, params = types.Object(), types.Object(), form_params(ctx)
        inputs.view_target(ctx)
        strategy = params.get("strategy") or form_default(CaptionSettings, CaptionSettings.declared("strategy"))
        model = params.get("model") or default_model(ctx, "caption")
        # the language comes first: the caption field it suggests follows it (caption_de for "de")
        _language_dropdown(inputs, model)
        defaults = {
            "model": default_model(ctx, "caption"),
            "num_beams": captions.DEFAULT_BEAMS.get(strategy),
            "field": _default_caption_field(params.get("language")),
        }
        settings_inputs(inputs, CaptionSettings, params, defaults=defaults, skip=("language",), advanced=advanced)
        run_inputs(inputs, CaptionSettings, advanced)
        advanced_section(inputs, advanced)

        def check():
            settings = check_settings(ctx, CaptionSettings)
            if settings.language is not None:
                from fiftyone_blip import adapters

                adapters.check_language(settings.language)

        def check_words():
            # banned and forced words the model cannot write, known without loading it when its
            # tokenizer is on disk (an adapter's tokenizer, or a hub model's, is checked when the run starts)
            try:
                settings = CaptionSettings.from_params(app_params(params))
            except ValueError:
                return  # flagged by `check`
            if settings.language is not None or not (settings.ban_words or settings.force_words):
                return
            local = check_model(params.get("model") or defaults["model"], "caption")
            if local is not None:
                captions.constraint_token_ids(settings, local_tokenizer(local)[0])

        schedule_note(inputs)
        return checked_form(
            inputs,
            "BLIP: caption samples",
            *field_checks(params, CaptionSettings, RunOptions),
            lambda: check_model(params.get("model"), "caption", params.get("revision")),
            lambda: check_text_field(ctx.dataset, "field", params.get("field"), must_exist=False),
            check,
            check_words,
            lambda: self.check_run(ctx, params),
            params=ctx.params,
        )

    def planned_task(self, params, settings, options):
        from fiftyone_blip import captions

        return captions.task_for(settings, options)

    def run(self, params, view, settings, options):
        return fiftyone_blip.caption(view, settings, options)

    def message(self, summary, settings):
        return f"BLIP captions: {summary}; field {settings.field!r} (tick it in the sidebar to see it on the grid)"


# ---- caption quality: CapFilt and evaluation against references ----


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
    if not fields:
        prop = inputs.view(name, types.Warning(label="No caption field", description="The dataset has no text field"))
        prop.invalid = True
        return None
    _dropdown(inputs, name, label, {f: f for f in fields}, default=suggested)
    return suggested


class CleanCaptions(ReviewOperator):
    settings_class = CapFiltSettings

    @property
    def config(self):
        return _engine_config(
            "clean_captions",
            "BLIP: clean captions",
            "CapFilt: sample synthetic captions, score them and the existing ones by ITM, keep the best and "
            "flag the images whose caption the filter rejects",
        )

    def resolve_input(self, ctx):
        inputs, advanced, params = types.Object(), types.Object(), form_params(ctx)
        inputs.view_target(ctx)
        fields = caption_fields(ctx.dataset)
        suggested = next((f for f in fields if "caption" in f), fields[0] if fields else None)
        _field_dropdown(inputs, "caption_field", "Captions to clean", fields, suggested)
        inputs.str("out_field", label="Field for the kept caption", default="capfilt", required=True)
        defaults = {"caption_model": default_model(ctx, "caption"), "match_model": default_model(ctx, "match")}
        settings_inputs(inputs, CapFiltSettings, params, defaults=defaults, advanced=advanced)
        run_inputs(inputs, CapFiltSettings, advanced)
        advanced_section(inputs, advanced)
        schedule_note(inputs)
        return checked_form(
            inputs,
            "BLIP: clean captions",
            *field_checks(params, CapFiltSettings, RunOptions),
            lambda: check_model(params.get("caption_model"), "caption"),
            lambda: check_model(params.get("match_model"), "match"),
            lambda: check_nonempty(params, "out_field"),
            lambda: check_settings(ctx, CapFiltSettings),
            params=ctx.params,
        )

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
        return _engine_config(
            "evaluate_captions",
            "BLIP: evaluate captions",
            "Score captions against reference captions (BLEU-1..4, ROUGE-L, CIDEr-D) and by BLIP's ITM head",
        )

    def resolve_input(self, ctx):
        inputs, advanced, params = types.Object(), types.Object(), form_params(ctx)
        inputs.view_target(ctx)
        fields = caption_fields(ctx.dataset)
        predicted = next((f for f in fields if f.startswith("caption")), fields[0] if fields else None)
        reference = next((f for f in fields if f.startswith("gt")), fields[-1] if fields else None)
        _field_dropdown(inputs, "pred_field", "Predicted captions", fields, predicted)
        _field_dropdown(inputs, "gt_field", "Reference captions", fields, reference)
        inputs.str("eval_key", label="Evaluation key", default="eval", required=True)
        settings_inputs(
            inputs, CaptionEvalSettings, params, defaults={"model": default_model(ctx, "match")}, advanced=advanced
        )
        run_inputs(inputs, CaptionEvalSettings, advanced)
        advanced_section(inputs, advanced)
        schedule_note(inputs)
        return checked_form(
            inputs,
            "BLIP: evaluate captions",
            *field_checks(params, CaptionEvalSettings, RunOptions),
            lambda: check_model(params.get("model"), "match"),
            lambda: check_nonempty(params, "eval_key"),
            lambda: check_settings(ctx, CaptionEvalSettings),
            params=ctx.params,
        )

    def run(self, params, view, settings, options):
        return fiftyone_blip.evaluate_captions(
            view, params["pred_field"], params["gt_field"], params.get("eval_key") or "eval", settings, options
        )

    def message(self, result, settings):
        from fiftyone_blip.caption_metrics import METRIC_NAMES

        names = {**METRIC_NAMES, "itm": "ITM"}
        figures = ", ".join(f"{names[k]} {v:.3f}" for k, v in result["corpus"].items() if v is not None)
        return f"BLIP caption evaluation of {result['samples']} samples: {figures}; review view {result['view']!r}"


# ---- heatmaps: where the model looked, per caption word ----


def text_field_default(dataset, default):
    """The text field a form suggests: `default` where the dataset has it, else its first caption-like text field."""
    if dataset is None:
        return default
    schema = dataset.get_field_schema(ftype=fo_fields.StringField)
    if default in schema:
        return default
    return next((name for name in sorted(schema) if "caption" in name), default)


_TEXT_SOURCES = {"field": "A text field of each sample", "text": "One text for every image (a query)"}


class ComputeHeatmaps(EngineOperator):
    settings_class = HeatmapSettings

    @property
    def config(self):
        return _engine_config(
            "compute_heatmaps",
            "BLIP: word heatmaps",
            "Where BLIP looked for each caption word: a caption heatmap and one map per word",
        )

    def resolve_input(self, ctx):
        from fiftyone_blip import word_heatmaps

        inputs, advanced, raw = types.Object(), types.Object(), form_params(ctx)
        inputs.view_target(ctx)
        mode = raw.get("mode") or form_default(HeatmapSettings, HeatmapSettings.declared("mode"))
        setting_input(inputs, HeatmapSettings, HeatmapSettings.declared("mode"))
        sources = dict(_TEXT_SOURCES)
        if mode == "cross-attention":
            sources["generate"] = "Caption each image first"
        _dropdown(inputs, "text_source", "Text to explain", sources, default="field")
        defaults = {
            "model": default_model(ctx, word_heatmaps.MODE_TASKS[mode]),
            "text_field": text_field_default(ctx.dataset, HeatmapSettings.defaults()["text_field"]),
        }
        # a maps folder only under the root the server allows
        skip = ("mode",) if _app_root() is not None else ("mode", "maps_dir")
        settings_inputs(inputs, HeatmapSettings, raw, defaults=defaults, skip=skip, advanced=advanced)
        run_inputs(inputs, HeatmapSettings, advanced)
        advanced_section(inputs, advanced)

        params = {"text_source": "field", **raw}
        task = word_heatmaps.MODE_TASKS[mode]

        def check_layers():
            # the layer range is known without loading the model when its config is on disk
            local = check_model(params.get("model") or defaults["model"], task)
            settings = HeatmapSettings(mode=mode, layers=params.get("layers"))
            if local is not None and settings.layers is not None:
                config = json.loads((local / "config.json").read_text())
                settings.layer_indices(config["text_config"]["num_hidden_layers"])

        text_field = params.get("text_field") or defaults["text_field"]
        schedule_note(inputs)
        return checked_form(
            inputs,
            "BLIP: word heatmaps",
            *field_checks(params, HeatmapSettings, RunOptions),
            lambda: check_model(params.get("model"), task, params.get("revision")),
            lambda: params["text_source"] != "field" or check_text_field(ctx.dataset, "text_field", text_field, True),
            check_layers,
            lambda: check_settings(ctx, HeatmapSettings),
            lambda: self.check_run(ctx, params, task=task),
            params=ctx.params,
        )

    def planned_task(self, params, settings, options):
        from fiftyone_blip import word_heatmaps

        return word_heatmaps.task_for(settings, options)

    def run(self, params, view, settings, options):
        return fiftyone_blip.heatmaps(view, settings, options)

    def message(self, summary, settings):
        return (
            f"BLIP heatmaps: {summary}; field {settings.field!r}: open a sample and its "
            "BLIP word heatmaps panel to see each word's map"
        )


# Words whose maps say little (articles, prepositions): the panel opens on the first other word.
FUNCTION_WORDS = frozenset(
    "a an the of on in at to and or with by from for is are its this that "
    "der die das ein eine einer einem einen und mit auf im in am".split()
)


def first_content_word(words) -> int:
    """The index of the first word that is not a function word ("circle" in "a red circle": 1, "red")."""
    return next((i for i, word in enumerate(words) if word.lower().strip(".,") not in FUNCTION_WORDS), 0)


class WordHeatmapsPanel(foo.Panel):
    """Sample modal panel: pick a caption word, see its map over the image and its probability.

    It only reads maps the heatmap operator stored; it never runs a model.
    """

    @property
    def config(self):
        return foo.PanelConfig(
            name="word_heatmaps",
            label="BLIP word heatmaps",
            surfaces="modal",
            icon="local_fire_department",
            help_markdown="Pick a word of the caption to see where BLIP looked for it. "
            "Compute maps first with the **BLIP: word heatmaps** operator.",
        )

    def on_load(self, ctx):
        self._show(ctx)

    def on_change_current_sample(self, ctx):
        ctx.panel.state.word = None  # a new caption: start again at its first content word
        self._show(ctx)

    def on_change_field(self, ctx):
        ctx.panel.state.field = ctx.params.get("value")
        ctx.panel.state.word = None
        self._show(ctx)

    def on_change_word(self, ctx):
        ctx.panel.state.word = ctx.params.get("value")
        self._show(ctx)

    def _show(self, ctx):
        """Puts the chosen word's overlay and probability into the panel's state and data."""
        from fiftyone_blip import word_heatmaps

        state = ctx.panel.state
        fields = word_heatmaps.heatmap_fields(ctx.dataset) if ctx.dataset is not None else []
        state.fields = fields
        state.message = None
        if not fields:
            state.message = "No word heatmaps on this dataset yet: run the **BLIP: word heatmaps** operator."
            return
        if state.field not in fields:
            state.field = fields[0]
        if not ctx.current_sample:
            state.message = "Open a sample to see its word heatmaps."
            return
        sample = ctx.dataset[ctx.current_sample]
        try:
            shown = word_heatmaps.word_view(sample, state.field, int(state.word or 0))
            first = first_content_word(shown["words"])
            if state.word is None and first != shown["index"]:
                shown = word_heatmaps.word_view(sample, state.field, first)
        except ValueError as error:
            state.message = f"{error}. Run the **BLIP: word heatmaps** operator on this sample."
            return
        state.words = shown["words"]
        state.word = str(shown["index"])
        state.caption = shown["text"]
        if shown["probability"] is not None:
            state.score = f"**{shown['word']}**: probability {shown['probability']:.3f} under the captioner"
        elif shown["match"] is not None:
            state.score = f"**{shown['word']}** (Grad-CAM); image-text match probability {shown['match']:.3f}"
        else:
            state.score = f"**{shown['word']}**"
        ctx.panel.data.overlay = shown["overlay"]

    def render(self, ctx):
        state = ctx.panel.state
        panel = types.Object()
        if state.message:
            panel.md(state.message, name="message")
            return types.Property(panel, view=types.GridView(orientation="vertical"))
        fields = state.fields or []
        if len(fields) > 1:
            field_view = types.DropdownView(label="Heatmap field")
            for name in fields:
                field_view.add_choice(name, label=name)
            panel.enum(
                "field", field_view.values(), default=state.field, view=field_view, on_change=self.on_change_field
            )
        words = state.words or []
        word_view = types.DropdownView(label="Word")
        for i, word in enumerate(words):
            word_view.add_choice(str(i), label=f"{i + 1}. {word}")
        panel.enum("word", word_view.values(), default=state.word or "0", view=word_view, on_change=self.on_change_word)
        if state.caption:
            panel.md(f"*{state.caption}*", name="caption")
        panel.md(state.score or "", name="score")
        panel.img("overlay", alt_text="the word's map over the image", width="100%")
        return types.Property(panel, view=types.GridView(orientation="vertical"))


# --- label QA: mislabels by image-text matching ---------------------------------------------------------------


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
        return _engine_config(
            "find_mislabels",
            "BLIP: find mislabels",
            "Score labels, detections or captions against their images with BLIP's ITM head; "
            "flag and tag the most suspicious for review",
        )

    def resolve_input(self, ctx):
        from fiftyone_blip import mislabels

        inputs = types.Object()
        inputs.view_target(ctx)
        compatible = mislabels.compatible_fields(ctx.dataset) if ctx.dataset is not None else []
        if not compatible:
            prop = inputs.view(
                "no_fields",
                types.Warning(
                    label="No label field to check",
                    description="The dataset has no Classification, Classifications, Detections or string field",
                ),
            )
            prop.invalid = True
            return types.Property(inputs, view=types.View(label="BLIP: find mislabels"))
        suggested = label_field_default(ctx.dataset, compatible)
        _dropdown(inputs, "label_field", "Label field", {f: f for f in compatible}, default=suggested)
        raw, advanced = form_params(ctx), types.Object()
        label_field = raw.get("label_field") or suggested
        kind = mislabels.label_kind(ctx.dataset, label_field) if label_field in compatible else "text"
        model = raw.get("model") or default_model(ctx, "match")
        _dropdown(inputs, "flag_by", "Flag by", _FLAG_BY_LABELS, default="threshold")
        defaults = {
            "model": default_model(ctx, "match"),
            "field": f"{label_field}_match",
            "template": mislabels.default_template(model),
        }
        context = {"kind": kind, "flag_by": raw.get("flag_by") or "threshold"}
        settings_inputs(inputs, MislabelSettings, raw, defaults=defaults, context=context, advanced=advanced)
        run_inputs(inputs, MislabelSettings, advanced)
        advanced_section(inputs, advanced)

        def check():
            if label_field not in compatible:
                mislabels.label_kind(ctx.dataset, label_field)  # raises: a missing field, or what it holds
                raise ValueError(f"`label_field` {label_field!r} is not a label field (choose one of {compatible})")
            check_settings(ctx, MislabelSettings, {**context, **raw})

        params = {**context, **raw}
        schedule_note(inputs)
        return checked_form(
            inputs,
            "BLIP: find mislabels",
            *field_checks(params, MislabelSettings, RunOptions),
            lambda: check_model(params.get("model"), "match", params.get("revision")),
            lambda: check_nonempty(params, "tag"),
            check,
            params=ctx.params,
        )

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


class ComputeEmbeddings(EngineOperator):
    settings_class = EmbedSettings

    @property
    def config(self):
        return _engine_config(
            "compute_embeddings",
            "BLIP: compute embeddings and similarity index",
            "Embed images with BLIP (ITC) and build a similarity index with text search",
        )

    def resolve_input(self, ctx):
        inputs, advanced, params = types.Object(), types.Object(), form_params(ctx)
        inputs.view_target(ctx)
        defaults = {"model": default_model(ctx, "match")}
        settings_inputs(inputs, EmbedSettings, params, defaults=defaults, advanced=advanced)
        run_inputs(inputs, EmbedSettings, advanced)
        advanced_section(inputs, advanced)

        schedule_note(inputs)
        return checked_form(
            inputs,
            "BLIP: compute embeddings and similarity index",
            *field_checks(params, EmbedSettings, RunOptions),
            lambda: check_model(params.get("model"), "match", params.get("revision")),
            lambda: check_nonempty(params, "brain_key"),
            lambda: check_settings(ctx, EmbedSettings),
            lambda: self.check_run(ctx, params, task="match"),
            lambda: check_brain_key(
                ctx.dataset, params.get("brain_key"), params.get("model") or default_model(ctx, "match")
            ),
            params=ctx.params,
        )

    def planned_task(self, params, settings, options):
        from fiftyone_blip import embeddings

        return embeddings.task_for(settings, options)

    def run(self, params, view, settings, options):
        return fiftyone_blip.embed(view, settings, options)

    def message(self, summary, settings):
        if settings.brain_key is None:
            return f"BLIP embeddings: {summary}; field {settings.field!r} (no index built)"
        return (
            f"BLIP embeddings: {summary}; field {settings.field!r}, similarity index {settings.brain_key!r}: "
            "search it with the grid's sort-by-similarity button (a text prompt or selected samples) "
            "or the BLIP: search by text operator"
        )


def check_brain_key(dataset, brain_key, model):
    """A brain key already in use must hold a fiftyone-blip index of the same model (it is then rebuilt)."""
    from fiftyone_blip import embeddings

    if dataset is None or not brain_key or brain_key not in dataset.list_brain_runs():
        return
    try:
        built_with = embeddings.index_model_name(dataset, brain_key)
    except ValueError:
        raise ValueError(f"`brain_key` {brain_key!r} holds another kind of brain run: choose another key") from None
    if built_with != embeddings.stored_model_name(model):
        raise ValueError(
            f"`brain_key` {brain_key!r} already holds an index built with model {built_with!r}: choose another key"
        )


def blip_indexes(dataset) -> list[str]:
    """The dataset's similarity indexes built by fiftyone-blip (other brain runs cannot embed BLIP text)."""
    from fiftyone_blip import embeddings

    keys = []
    for key in dataset.list_brain_runs() if dataset is not None else []:
        try:
            embeddings.index_model_name(dataset, key)
        except ValueError:
            continue
        keys.append(key)
    return keys


class SearchByText(foo.Operator):
    """Text search re-ranked by BLIP's ITM head: the SDK's `search(..., rerank=True)`, shown as the App's view.

    The App's own similarity search ranks by the ITC cosine alone; this
    re-scores the ITC shortlist with the ITM head (BLIP's retrieval recipe)
    and sets the view to the results in that order.
    """

    @property
    def config(self):
        return foo.OperatorConfig(
            name="search_by_text",
            label="BLIP: search by text",
            description="Find the samples that best match a text: ITC shortlist re-scored by BLIP's ITM head",
            dynamic=True,
        )

    def resolve_input(self, ctx):
        inputs = types.Object()
        label = "BLIP: search by text"
        keys = blip_indexes(ctx.dataset)
        if not keys:
            prop = inputs.view(
                "no_index",
                types.Warning(
                    label="No BLIP similarity index",
                    description="Build one first with the **BLIP: compute embeddings and similarity index** operator",
                ),
            )
            prop.invalid = True
            return types.Property(inputs, view=types.View(label=label))
        inputs.str("query", label="Text", required=True, description="what to look for, e.g. 'a red circle'")
        default_key = SearchSettings.defaults()["brain_key"]
        default_key = default_key if default_key in keys else keys[0]
        _dropdown(inputs, "brain_key", "Similarity index (brain key)", {k: k for k in keys}, default=default_key)
        count = len(ctx.view) if ctx.view is not None else 0
        k_default = min(SearchSettings.defaults()["k"], max(count, 1))
        setting_input(inputs, SearchSettings, SearchSettings.declared("k"), default=k_default)
        inputs.properties["k"].view.label = "Results (k)"
        setting_input(inputs, SearchSettings, SearchSettings.declared("rerank"), default=True)
        inputs.properties["rerank"].view.label = "Re-rank the ITC shortlist with the ITM head"
        params = ctx.params

        def check_k():
            k = params.get("k")
            if k is not None and not 1 <= k <= count:
                raise ValueError(f"`k` must be at most the number of samples searched ({count}), got {k}")

        return checked_form(
            inputs, label, check_k, lambda: params.get("query") is None or check_nonempty(params, "query")
        )

    def execute(self, ctx):
        params, view = declared_params(self, ctx), ctx.view
        query, brain_key = params["query"], params.get("brain_key") or SearchSettings.defaults()["brain_key"]
        k, rerank = params.get("k") or SearchSettings.defaults()["k"], params.get("rerank", True)
        results = fiftyone_blip.search(view, query, k=k, brain_key=brain_key, rerank=rerank)
        ids = results.values("id")
        ctx.ops.set_view(view=results)
        ranking = "ITC shortlist re-scored by ITM" if rerank else "ITC cosine"
        ctx.ops.notify(
            f"BLIP search: the {len(ids)} best matches of {query!r}, best first ({ranking}; index {brain_key!r})",
            variant="success",
        )
        return {"ids": ids}


# --- visual question answering ------------------------------------------------------------------


_TOKENIZERS = {}


def local_tokenizer(local):
    """The tokenizer and text positions of a model folder, loaded once per folder (forms run often)."""
    key = str(local)
    if key not in _TOKENIZERS:
        from transformers import AutoTokenizer

        config = json.loads((Path(local) / "config.json").read_text())
        positions = config.get("text_config", {}).get("max_position_embeddings", 512)
        _TOKENIZERS[key] = (AutoTokenizer.from_pretrained(key), positions)
    return _TOKENIZERS[key]


def _as_question_param(message: str) -> str:
    # the library takes a list of questions; the form has one
    return message.replace("`questions`", "`question`").replace("`fields`", "`field`")


class AskQuestion(EngineOperator):
    """Asks every image of the target a question (BLIP VQA); the answers land in a filterable field."""

    settings_class = VqaSettings

    @property
    def config(self):
        return _engine_config(
            "ask_question",
            "BLIP: ask a question",
            "Ask every image a question with BLIP's VQA head; the answer goes into a field you can filter on",
        )

    def resolve_input(self, ctx):
        from fiftyone_blip import vqa

        inputs, advanced, params = types.Object(), types.Object(), form_params(ctx)
        label = "BLIP: ask a question"
        inputs.view_target(ctx)
        inputs.str(
            "question", label="Question", required=True, description="e.g. 'how many people are there?', 'is it night?'"
        )
        inputs.str(
            "answers",
            label="Candidate answers",
            required=False,
            description="comma-separated, e.g. 'yes, no' or '1, 2, 3': the answer is the candidate the model finds "
            "most likely; empty: the model writes its own answer",
        )
        inputs.bool(
            "boolean",
            label="Yes/no question: store True/False",
            default=False,
            description="answers 'yes' or 'no' only, stored as a boolean with its confidence beside it",
        )
        inputs.str(
            "field",
            label="Answer field",
            required=True,
            default=vqa.default_field(params.get("question")),
            description="a Classification (label: the answer, confidence: its probability), or a boolean for a "
            "yes/no question: filter on it in the sidebar",
        )
        settings_inputs(inputs, VqaSettings, params, defaults={"model": default_model(ctx, "vqa")}, advanced=advanced)
        run_inputs(inputs, VqaSettings, advanced)
        advanced_section(inputs, advanced)

        def questions():
            question = params.get("question")
            field = params.get("field") or vqa.default_field(question)
            try:
                return vqa.make_questions(
                    question or "", field, vqa.parse_answers(params.get("answers")), bool(params.get("boolean"))
                )
            except ValueError as error:
                raise ValueError(_as_question_param(str(error))) from None

        def check_questions():
            if params.get("question") is None:
                return  # not typed yet: the form marks it required
            checked = questions()
            if ctx.dataset is not None:
                result_fields.check(ctx.dataset, vqa.wanted_fields(checked), "questions")

        def check_text_fits():
            # the question must fit the model's text positions; known without loading the model
            # when its tokenizer is on disk (a hub model is checked when the run starts, before any work)
            if not params.get("question") or not str(params["question"]).strip():
                return
            try:
                checked = questions()
            except ValueError:
                return  # flagged by check_questions
            local = check_model(params.get("model") or default_model(ctx, "vqa"), "vqa")
            if local is None:
                return
            tokenizer, positions = local_tokenizer(local)
            try:
                vqa.check_text_fits(checked, tokenizer, positions)
            except ValueError as error:
                raise ValueError(_as_question_param(str(error))) from None

        schedule_note(inputs)
        return checked_form(
            inputs,
            label,
            *field_checks(params, VqaSettings, RunOptions),
            lambda: check_model(params.get("model"), "vqa", params.get("revision")),
            lambda: params.get("question") is None or check_nonempty(params, "question"),
            check_questions,
            check_text_fits,
            lambda: check_settings(ctx, VqaSettings),
            lambda: self.check_run(ctx, params, task="vqa"),
            params=ctx.params,
        )

    def planned_task(self, params, settings, options):
        from fiftyone_blip import vqa

        question = params.get("question")
        if not question or not str(question).strip():
            return None
        questions = vqa.make_questions(
            question,
            params.get("field") or vqa.default_field(question),
            vqa.parse_answers(params.get("answers")),
            bool(params.get("boolean")),
        )
        return vqa.task_for(questions, settings, options)

    def run(self, params, view, settings, options):
        from fiftyone_blip import vqa

        question = params["question"]
        return fiftyone_blip.ask(
            view,
            question,
            params.get("field") or vqa.default_field(question),
            answers=vqa.parse_answers(params.get("answers")),
            boolean=bool(params.get("boolean")),
            settings=settings,
            options=options,
        )

    def message(self, summary, settings):
        return f"BLIP answers: {summary}; filter the grid by answer with the field in the sidebar"


# --- language adapters ------------------------------------------------------------------------


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
            _dropdown(inputs, "caption_field", "Caption field", {f: f for f in string_fields}, default=default)
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


def register(p):
    p.register(CaptionSamples)
    p.register(CleanCaptions)
    p.register(EvaluateCaptions)
    p.register(ComputeHeatmaps)
    p.register(WordHeatmapsPanel)
    p.register(FindMislabels)
    p.register(label_fixes.FixMislabels)
    p.register(ComputeEmbeddings)
    p.register(SearchByText)
    p.register(AskQuestion)
    p.register(TrainLanguageAdapter)
