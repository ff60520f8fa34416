"""What every fiftyone-blip operator shares: the App's confinement of server paths, the params an
operator reads, running on the engine with progress, and the one form every engine operator builds.
"""

import dataclasses
import os
import queue
import re
import threading
from pathlib import Path

import fiftyone.operators as foo
import fiftyone.operators.types as types

from fiftyone_blip import models
from fiftyone_blip.forms import (
    advanced_section,
    checked_form,
    field_checks,
    form_params,
    form_sections,
    run_inputs,
    run_options,
    schedule_note,
    settings_inputs,
)
from fiftyone_blip.settings import RunOptions


def default_model(ctx, task):
    """The form's model: the bundled one on a shapes dataset (it knows only shapes), else Salesforce's."""
    if ctx.dataset is not None and "shapes" in (ctx.dataset.info or {}):
        return "shapes-tiny"
    return models.DEFAULT_MODELS[task]


APP_ROOT_ENV = "FIFTYONE_BLIP_APP_ROOT"
_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")


def app_root():
    """The server folder under which App forms may name paths (None: unset, no paths from the App)."""
    root = os.environ.get(APP_ROOT_ENV)
    return Path(root).expanduser().resolve() if root else None


def under_app_root(value) -> str | None:
    """The one confinement rule for every server path an App request names: `value` resolved under
    the App root (links followed), or None where there is no root or it would land outside.

    The App runs as the server, not as the user: a form may reach no other server folder.
    """
    root = app_root()
    if root is None:
        return None
    path = (root / str(value).strip()).resolve()
    return str(path) if path.is_relative_to(root) else None


def _app_folder(value, name):
    """A folder from a form, confined to the App root (see `under_app_root`)."""
    if not value or not str(value).strip():
        return None
    if app_root() is None:
        # the setting's name is in the README (its App section): a form speaks of no environment variables
        raise ValueError(f"`{name}` is not available in the App: its server allows no folders")
    path = under_app_root(value)
    if path is None:
        raise ValueError(f"`{name}` must be a folder under {str(app_root())!r}, got {value!r}")
    return path


def _app_model(value, task=None):
    """A model from a form: a bundled name, a folder under the App root, or a hub id. Any other server
    path is refused with the same message whether it exists or not. A hub id is loaded from the
    hub only (`models.HubId`), never from a server folder of that name outside the root. The refusal's
    example is a hub id of the `task`'s kind ("caption": a captioning model), when it is known."""
    if not value or not str(value).strip():
        return None
    value = str(value).strip()
    if value in models.BUNDLED:
        return value
    root, path = app_root(), under_app_root(value)
    if path is not None and Path(path).is_dir():
        return path  # a model folder under the root ("models/captioner" too)
    if _HUB_ID.match(value) and ".." not in value:
        return models.HubId(value)
    if path is not None:
        return path  # under the root, not there: the loader says so
    where = f", or a folder under {str(root)!r}" if root is not None else ""
    example = f"a hub id like {models.DEFAULT_MODELS[task]}" if task in models.DEFAULT_MODELS else "a hub id"
    raise ValueError(f"`model` must be {', '.join(models.BUNDLED)} or {example}{where}; got {value!r}")


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
    for name, task in (("model", None), ("caption_model", "caption"), ("match_model", "match")):
        if params.get(name):
            params[name] = _app_model(params[name], task)
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


def check_settings(ctx, cls, params=None):
    """The library's own checks of a form: its run options, then its settings (returned)."""
    run_options(ctx, cls, None)
    return cls.from_params(app_params(form_params(ctx) if params is None else params))


def check_model(name, task, revision=None):
    """Checks a model name without loading it: bundled, a hub id `org/name`, or a folder under the App
    root (see `_app_model`: any other server path is refused alike, whether it exists or not); and
    that a `revision` goes with a hub model only."""
    if not name:
        return None
    name = _app_model(name, task)
    _, local = models.resolve_name(name, task)  # raises for a folder that does not exist
    models.check_revision_applies(name, task, revision)
    return local


def engine_config(name, label, description):
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
    """Runs `work(progress)` in an immediate run and reports progress where the App can see it.

    Immediate runs can only talk to the App by yielding, so the work runs in a
    thread and this generator yields its progress messages. (A delegated run
    reports through `ctx.set_progress`: `EngineOperator.execute`.)
    """
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


SHOW_FAILURES = "@fiftyone-blip/blip/show_failed_samples"


def show_sidebar_groups(ctx):
    """The trigger that shows the runs' sidebar groups in the open dataset: the App keeps the groups it
    read when it opened the dataset, and a reload only adds new fields to its default groups."""
    from fiftyone_blip import app_config

    ctx.dataset.reload()
    return ctx.trigger(app_config.SHOW_GROUPS_OPERATOR, app_config.sidebar_params(ctx.dataset))


def _notify(ctx, outcome):
    """The end of an immediate run: say what was done with the failures counted and, where samples
    failed, show the outcome in the run's dialog with a button to their view and reasons
    (`runs.ShowFailedSamples`: one click)."""
    failed = outcome.get("failed") or 0
    yield ctx.trigger("notify", dict(message=outcome["summary"], variant="warning" if failed else "success"))
    if failed:
        outputs = types.Object()
        outputs.md(outcome["summary"], name="summary")
        outputs.btn(
            "show_failed",
            label=f"Show the {failed} failed samples",
            on_click=SHOW_FAILURES,
            params={"error_field": outcome["error_field"]},
            variant="contained",
        )
        shown = types.Property(outputs, view=types.View(label="Some samples failed"))
        yield ctx.ops.show_output(shown.to_json(), {"summary": outcome["summary"]})


def run_summary(result):
    """The engine's `RunSummary` in an SDK call's result (the summary itself, or a dict's "run"); None."""
    from fiftyone_blip import engine

    if isinstance(result, engine.RunSummary):
        return result
    if isinstance(result, dict) and isinstance(result.get("run"), engine.RunSummary):
        return result["run"]
    return None


def jsonable(value):
    """`value` as JSON values: dataclasses as dicts, numpy numbers as Python's, anything else as text."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        value = dataclasses.asdict(value)
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set)):
        return [jsonable(v) for v in value]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if hasattr(value, "item"):  # numpy scalars
        return value.item()
    return str(value)


# The reasons a run's outcome lists (most frequent first); the failed samples' view shows them all.
FAILURE_REASONS_SHOWN = 5


def failure_reasons(samples, error_field, limit=FAILURE_REASONS_SHOWN) -> dict:
    """{reason: samples} of the samples of `samples` whose `error_field` is set, most frequent first."""
    if samples is None or error_field not in samples._dataset.get_field_schema():
        return {}
    counts = samples.count_values(error_field)
    counts.pop(None, None)
    return dict(sorted(counts.items(), key=lambda item: (-item[1], str(item[0])))[:limit])


def run_outcome(result, message, samples) -> dict:
    """What a run tells its user and its record: the notice (`summary`, failures counted), the counts,
    the failure reasons and the result, as JSON (a delegated run's operation result)."""
    summary = run_summary(result)
    outcome = {"summary": message, "result": jsonable(result)}
    if summary is not None:
        error_field = f"{summary.field}_error"
        outcome.update(field=summary.field, done=summary.done, failed=summary.failed, skipped=summary.skipped)
        outcome.update(total=summary.total, error_field=error_field)
        if summary.failed:
            reasons = failure_reasons(samples, error_field)
            outcome["failures"] = reasons
            listed = "; ".join(f"{count}: {reason}" for reason, count in reasons.items())
            outcome["summary"] = f"{message}. {summary.failed} samples failed ({listed})"
    return outcome


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


def target_size(ctx) -> int:
    try:
        return len(ctx.target_view())
    except Exception:  # no dataset yet: nothing to decide
        return 0


@dataclasses.dataclass
class Form:
    """What a capability adds to the form every engine operator builds (`EngineOperator.form`).

    defaults: the settings' form defaults (the model's, a suggested field name).
    models: the model inputs and the kind of model each takes, {param: task};
        the first is the one the run's preflight loads no weights of.
    context: values outside the settings that decide which settings show.
    checks: the capability's own checks of the form (callables raising ValueError).
    """

    defaults: dict = dataclasses.field(default_factory=dict)
    models: dict = dataclasses.field(default_factory=lambda: {"model": "caption"})
    context: dict = dataclasses.field(default_factory=dict)
    checks: list = dataclasses.field(default_factory=list)


class EngineOperator(foo.Operator):
    """An operator that runs one capability on the engine.

    A subclass sets `settings_class` and says what its form adds (`form`),
    which engine task a run would start (`planned_task`), which SDK function
    to call (`run`) and what to tell the App after (`message`). The rest is
    the same for all: the form (target, the capability's inputs, the settings'
    inputs with the advanced ones collapsed, the run options, every check at
    its input, the engine's preflight), and `execute`: the settings from the
    form, one SDK call with progress, then a notice.
    """

    settings_class = None
    skip = ()  # settings the capability's own inputs show (`form`)

    def resolve_execution_options(self, ctx):
        """Both ways to run; scheduling is the suggested one above `DELEGATE_ABOVE` samples."""
        from fiftyone.operators.executor import ExecutionOptions

        return ExecutionOptions(
            allow_immediate_execution=True,
            allow_delegated_execution=True,
            default_choice_to_delegated=target_size(ctx) > DELEGATE_ABOVE,
        )

    def form(self, ctx, inputs, params) -> Form | None:
        """Adds the capability's own inputs (before its settings) and says what else its form needs;
        None: nothing to run on (the inputs say why)."""
        return Form()

    def resolve_input(self, ctx):
        inputs, advanced, raw = types.Object(), types.Object(), form_params(ctx)
        inputs.view_target(ctx)
        form = self.form(ctx, inputs, raw)
        if form is None:
            return types.Property(inputs, view=types.View(label=self.config.label))
        cls, params = self.settings_class, {**form.context, **raw}
        settings_inputs(inputs, cls, raw, form.defaults, self.skip, form.context, advanced)
        run_inputs(inputs, cls, advanced)
        advanced_section(inputs, advanced)
        schedule_note(inputs)
        model_param, task = next(iter(form.models.items()))
        model_checks = [
            lambda name=name, kind=kind: check_model(params.get(name), kind, params.get("revision"))
            for name, kind in form.models.items()
        ]
        return checked_form(
            inputs,
            self.config.label,
            *field_checks(params, cls, RunOptions),
            *model_checks,
            *form.checks,
            lambda: check_settings(ctx, cls, params),
            lambda: self.check_run(ctx, params, model_param, task),
            params=ctx.params,
        )

    def run(self, params, view, settings, options):
        """The SDK call; `params` are the form's declared params (`declared_params`)."""
        raise NotImplementedError

    def planned_task(self, samples, params, settings, options):
        """The engine `Task` the run would start on `samples`, the form's target (see `check_run`); None: the
        form checks no run ahead. Some tasks depend on the samples (the label classes, the evaluated captions)."""
        return None

    def check_run(self, ctx, params, model_param="model", task="caption"):
        """The capability's own checks of the run this form would start, then the engine's preflight,
        before Execute: words the model cannot write, layers it does not have, a field that holds
        values of others (a user's, or a run with other settings: which ones differ), a field of
        another type. Shown at the input it names, so Execute stays disabled until "Recompute" or
        another field is chosen. Only for models on this server (bundled or a folder): a hub model
        would be fetched at every keystroke, and is checked when the run starts."""
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
        except (ValueError, models.ModelLoadError):
            return  # flagged by the form's other checks
        view = ctx.target_view()
        planned = self.planned_task(view, params, settings, options)  # the capability's checks before loading
        if planned is not None:
            engine.preflight(view, planned, options)

    def message(self, result, settings) -> str:
        raise NotImplementedError

    def after_run(self, ctx, result):
        """What an immediate run shows in the App besides the notice (triggers to yield); nothing here."""
        return ()

    def resolve_output(self, ctx):
        """The outcome of a scheduled run, as the App's runs list shows it (its operation's result)."""
        if not ctx.delegated:
            return None
        outputs = types.Object()
        outputs.str("summary", label="Summary")
        for name, label in (("done", "Done"), ("failed", "Failed"), ("skipped", "Skipped"), ("total", "Of")):
            outputs.int(name, label=label)
        outputs.obj("failures", label="Failure reasons (samples)", view=types.JSONView())
        return types.Property(outputs, view=types.View(label=f"{self.config.label}: outcome"))

    def _start(self, ctx):
        """The run the form asks for: (declared params, settings, target view)."""
        params = declared_params(self, ctx)
        return params, self.settings_class.from_params(params), ctx.target_view()

    def execute(self, ctx):
        """Runs the capability: a scheduled run returns its outcome (`run_outcome`, stored as the
        operation's result); an immediate one streams progress, then reloads and tells the App."""
        if not ctx.delegated:
            return self._execute_in_app(ctx)
        params, settings, view = self._start(ctx)
        options = run_options(
            params,
            self.settings_class,
            lambda done, total: ctx.set_progress(done / max(total, 1), f"{done}/{total}"),
        )
        result = self.run(params, view, settings, options)
        return run_outcome(result, self.message(result, settings), view)

    def _execute_in_app(self, ctx):
        try:
            params, settings, view = self._start(ctx)
            result = yield from _run_with_progress(
                ctx,
                lambda progress: self.run(params, view, settings, run_options(params, self.settings_class, progress)),
            )
        except Exception as error:
            yield from _notify_failure(ctx, self.config.label, error)
            raise
        outcome = run_outcome(result, self.message(result, settings), view)
        yield ctx.trigger("reload_dataset")  # new fields show, as the brain plugin does
        yield show_sidebar_groups(ctx)
        yield from self.after_run(ctx, result)
        yield from _notify(ctx, outcome)
        return outcome


class ReviewOperator(EngineOperator):
    """An engine operator whose run saves a review view (`result["view"]`), shown once an immediate run ends."""

    def after_run(self, ctx, result):
        # Open the review view by its stages: the App looks a view name up in the saved views
        # it fetched with the page, which do not hold the one this run just saved, so
        # `set_view(name=...)` would fail there.
        yield ctx.ops.set_view(view=ctx.dataset.load_saved_view(result["view"]))
