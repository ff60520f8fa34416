"""The App's view of fiftyone-blip runs: the samples a run failed on, with their reasons; a dataset's
runs with their settings and counts, the view each was made on, and deleting one with what it wrote
(the library functions the CLI's `runs` commands call)."""

import fiftyone.operators as foo
import fiftyone.operators.types as types

import fiftyone_blip
from fiftyone_blip.app.base import (
    FAILURE_REASONS_SHOWN,
    declared_params,
    failure_reasons,
    jsonable,
    show_sidebar_groups,
)
from fiftyone_blip.forms import dropdown


def error_fields(dataset) -> dict[str, int]:
    """The `{field}_error` fields fiftyone-blip runs wrote on `dataset`, with the samples each marks failed."""
    if dataset is None:
        return {}
    found = {}
    for name, field in dataset.get_field_schema().items():
        info = field.info or {}
        if info.get("written_by") == "fiftyone-blip" and name == f"{info.get('field')}_error":
            found[name] = dataset.count(name)
    return found


def _no_execute(inputs, name="not_ready"):
    """Keeps Execute disabled: the form has nothing to run yet (as @voxel51/brain's forms do)."""
    prop = inputs.bool(name, view=types.HiddenView())
    prop.invalid = True


class ShowFailedSamples(foo.Operator):
    """Sets the App's view to the samples a run failed on, their reason shown on each."""

    @property
    def config(self):
        return foo.OperatorConfig(
            name="show_failed_samples",
            label="BLIP: show failed samples",
            description="Show the samples a fiftyone-blip run could not process, with the reason for each",
            dynamic=True,
        )

    def resolve_input(self, ctx):
        inputs = types.Object()
        counts = {name: count for name, count in error_fields(ctx.dataset).items() if count}
        if not counts:
            inputs.view("none", types.Notice(label="No fiftyone-blip run failed on a sample of this dataset"))
            _no_execute(inputs)
            return types.Property(inputs, view=types.View(label=self.config.label))
        chosen = ctx.params.get("error_field")
        chosen = chosen if chosen in counts else next(iter(counts))
        choices = {name: f"{name.removesuffix('_error')} ({count} samples failed)" for name, count in counts.items()}
        dropdown(inputs, "error_field", "Run (its result field)", choices, default=chosen)
        reasons = failure_reasons(ctx.dataset, chosen)
        listed = "\n".join(f"- {count} samples: {reason}" for reason, count in reasons.items())
        more = f" (the {FAILURE_REASONS_SHOWN} most frequent)" if len(reasons) == FAILURE_REASONS_SHOWN else ""
        inputs.md(f"**Reasons{more}**\n\n{listed}", name="reasons")
        return types.Property(inputs, view=types.View(label=self.config.label))

    def execute(self, ctx):
        name = declared_params(self, ctx).get("error_field")
        if name not in error_fields(ctx.dataset):
            raise ValueError(f"`error_field` {name!r} is not an error field of a fiftyone-blip run")
        failed = ctx.dataset.exists(name)
        ctx.ops.set_view(view=failed)
        ctx.ops.set_active_fields(fields=[name])  # each tile shows its reason
        return {"error_field": name, "samples": len(failed)}


_ACTIONS = {
    "info": "Show its records only",
    "load_view": "Open the view it was made on",
    "delete": "Delete it and what it wrote",
}


def _run_choices(records) -> dict[str, str]:
    """{run key: label} of a dataset's runs: capability, field, how many runs, the last one's status."""
    runs = {}
    for record in records:
        runs.setdefault(record["run_key"], []).append(record)
    return {
        key: f"{entries[-1]['capability']} into {entries[-1]['field']!r} "
        f"({len(entries)} run{'s' if len(entries) > 1 else ''}, last {entries[-1]['status']})"
        for key, entries in runs.items()
    }


def record_line(record) -> str:
    """One run record as a person reads it: when, status, counts, model, settings."""
    started = record["started"].strftime("%Y-%m-%d %H:%M:%S") if record.get("started") else "?"
    shard = f", shard {record['shard']}" if record.get("shard") else ""
    settings = ", ".join(f"{k}={v!r}" for k, v in sorted((record.get("settings") or {}).items()) if v is not None)
    return (
        f"{started} **{record['status']}**: {record['done']} done, {record['failed']} failed, "
        f"{record['skipped']} skipped of {record['total']}{shard}; model {record.get('model')!r} "
        f"({record.get('dtype')}); settings: {settings or 'defaults'}"
    )


class ManageRuns(foo.Operator):
    """A dataset's fiftyone-blip runs: their records, the view each was made on, and deleting one."""

    @property
    def config(self):
        return foo.OperatorConfig(
            name="manage_runs",
            label="BLIP: runs",
            description="List this dataset's fiftyone-blip runs with their settings and counts, open the view a "
            "run was made on, or delete a run and the fields it wrote",
            dynamic=True,
        )

    def resolve_input(self, ctx):
        inputs = types.Object()
        label = self.config.label
        records = fiftyone_blip.runs(ctx.dataset) if ctx.dataset is not None else []
        if not records:
            inputs.view("none", types.Notice(label="No fiftyone-blip run is recorded on this dataset"))
            _no_execute(inputs)
            return types.Property(inputs, view=types.View(label=label))
        choices = _run_choices(records)
        key = ctx.params.get("run_key")
        key = key if key in choices else next(reversed(choices))
        dropdown(inputs, "run_key", "Run", choices, default=key)
        mine = [r for r in records if r["run_key"] == key]
        lines = "\n".join(f"- {record_line(r)}" for r in reversed(mine))
        inputs.md(f"**Records of {key}** (latest first)\n\n{lines}", name="records")
        action_view = types.RadioGroup(orientation="vertical")
        for value, choice in _ACTIONS.items():
            action_view.add_choice(value, label=choice)
        inputs.enum("action", action_view.values(), default="info", label="Action", view=action_view)
        action = ctx.params.get("action") or "info"
        if action == "info":
            _no_execute(inputs)
        elif action == "delete":
            plan = fiftyone_blip.delete_run(ctx.dataset, key, dry_run=True)
            inputs.view(
                "warning",
                types.Warning(label=f"Deleting run {key!r} removes", description="; ".join(plan.lines()[:-1])),
            )
            inputs.bool("confirm", label="Yes, delete these", default=False)
            if not ctx.params.get("confirm"):
                _no_execute(inputs)
        return types.Property(inputs, view=types.View(label=label))

    def execute(self, ctx):
        params = declared_params(self, ctx)
        key, action = params.get("run_key"), params.get("action")
        if action == "load_view":
            ctx.ops.set_view(view=ctx.dataset.load_run_view(key))
            return {"run_key": key, "view": "loaded"}
        if action != "delete" or not params.get("confirm"):
            raise ValueError("`action` must be 'load_view', or 'delete' with `confirm` ticked")
        plan = fiftyone_blip.delete_run(ctx.dataset, key)
        ctx.ops.reload_dataset()
        show_sidebar_groups(ctx)  # its emptied groups go
        ctx.ops.notify(plan.lines()[-1], variant="success")
        return jsonable(plan)
