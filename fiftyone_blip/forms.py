"""App forms built from the settings dataclasses, beside the CLI's options (`cli.settings_options`).

A setting is declared once (`settings.setting`: label, help, default, bounds,
choices, "advanced"); the CLI turns it into an option and this module into a
form input of FiftyOne's operator types. `checked_form` runs the library's own
checks and shows each failure at the input it names, as @voxel51/brain does.
"""

import dataclasses
import re

import fiftyone.core.fields as fo_fields
import fiftyone.operators.types as types

from fiftyone_blip import models
from fiftyone_blip.settings import RunOptions, check_value, form_default, form_shows, label_of


def dropdown(inputs, name, label, choices, default, description=None):
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
        dropdown(inputs, field.name, label, {c: labels.get(c, c) for c in choices}, default, description)
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


def input_named(names, message):
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
            name = input_named(sections, message)
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


def nothing_to_run(inputs, name: str, label: str, description: str) -> None:
    """A warning that the form has nothing to run on (and why), which keeps Execute disabled."""
    prop = inputs.view(name, types.Warning(label=label, description=description))
    prop.invalid = True


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


# What scheduling needs of the server is in the README ("Scheduling runs"); the form names the one command.
SCHEDULE_NOTE = (
    "**Schedule** runs this in the background, in an App started with `fiftyone-blip app DATASET`; "
    "`fiftyone delegated list` shows the queued and finished runs."
)
