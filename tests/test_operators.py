"""The App operators through FiftyOne's own operator execution: registry, immediate, delegated."""

import pytest
from app_forms import form_errors

from fiftyone_blip.app_config import SHOW_GROUPS_OPERATOR as SHOW_GROUPS

URI = "@fiftyone-blip/blip/caption_samples"


@pytest.fixture(autouse=True)
def _plugin(plugin_installed):
    return plugin_installed


@pytest.fixture(scope="module")
def registry(plugin_installed):
    import fiftyone.operators as foo

    return foo.OperatorRegistry()


def test_every_operator_is_registered(registry):
    import yaml

    from fiftyone_blip.plugin import plugin_dir

    declared = yaml.safe_load((plugin_dir() / "fiftyone.yml").read_text())["operators"]
    uris = {op.uri for op in registry.list_operators()}
    for name in declared:
        assert f"@fiftyone-blip/blip/{name}" in uris
    assert registry.operator_exists(URI)


def test_immediate_execution_on_the_current_view(fresh_dataset):
    import fiftyone.operators as foo

    view = fresh_dataset.limit(10)
    result = foo.execute_operator(
        URI, ctx=dict(view=view, params=dict(model="shapes-tiny", field="caption", view_target="CURRENT_VIEW"))
    )
    result.raise_exceptions()
    assert fresh_dataset.count("caption") == 10
    captioned = fresh_dataset.exists("caption")
    assert sum(a == b for a, b in zip(*captioned.values(["caption", "gt_caption"]))) >= 9


def test_selected_samples_only(fresh_dataset):
    import fiftyone.operators as foo

    ids = fresh_dataset.take(5, seed=1).values("id")
    result = foo.execute_operator(
        URI,
        ctx=dict(
            dataset=fresh_dataset,
            selected=ids,
            params=dict(
                model="shapes-tiny", field="caption", strategy="beam", num_beams=2, view_target="SELECTED_SAMPLES"
            ),
        ),
    )
    result.raise_exceptions()
    assert set(fresh_dataset.exists("caption").values("id")) == set(ids)


def test_delegated_execution_queues_then_runs(fresh_dataset):
    import fiftyone.operators as foo
    from fiftyone.factory.repos.delegated_operation import DelegatedOperationRepo  # noqa: F401
    from fiftyone.operators.delegated import DelegatedOperationService

    result = foo.execute_operator(
        URI,
        ctx=dict(dataset=fresh_dataset, params=dict(model="shapes-tiny", field="queued", view_target="DATASET")),
        request_delegation=True,
    )
    result.raise_exceptions()
    assert "queued" not in fresh_dataset.get_field_schema()  # only queued so far
    service = DelegatedOperationService()
    queued = service.list_operations(dataset_name=fresh_dataset.name, run_state="queued")
    assert [op.operator for op in queued] == [URI]
    service.execute_queued_operations(dataset_name=fresh_dataset.name)
    done = service.get(queued[0].id)
    assert done.run_state == "completed", done.run_result
    assert fresh_dataset.count("queued") == 48


def test_invalid_form_is_marked_invalid_and_nothing_runs(fresh_dataset):
    import fiftyone.operators as foo
    from fiftyone.operators.executor import ExecutionContext

    operator = foo.get_operator(URI)
    ctx = ExecutionContext(
        request_params=dict(dataset_name=fresh_dataset.name, params=dict(strategy="beam", num_beams=42))
    )
    form = operator.resolve_input(ctx)
    assert form_errors(form) == {"num_beams": "Beams must be from 1 to 10, got 42"}

    with pytest.raises(Exception, match="num_beams"):
        foo.execute_operator(
            URI,
            ctx=dict(
                dataset=fresh_dataset, params=dict(model="shapes-tiny", field="caption", strategy="beam", num_beams=42)
            ),
        ).raise_exceptions()
    assert "caption" not in fresh_dataset.get_field_schema()


def test_immediate_runs_stream_progress_to_the_app(fresh_dataset):
    import fiftyone.operators as foo
    from fiftyone.operators.executor import ExecutionContext, Executor

    operator = foo.get_operator(URI)
    ctx = ExecutionContext(
        request_params=dict(
            dataset_name=fresh_dataset.name,
            params=dict(model="shapes-tiny", field="caption", batch_size=8, view_target="DATASET"),
        ),
        executor=Executor(),
    )
    messages = [m.body for m in operator.execute(ctx)]
    progress = [m.params for m in messages if m.operator_uri == "set_progress"]
    assert len(progress) == 6 and progress[-1]["progress"] == 1.0 and progress[-1]["label"] == "48/48"
    assert [m.operator_uri for m in messages[-3:]] == ["reload_dataset", SHOW_GROUPS, "notify"]
    assert "48 done" in messages[-1].params["message"]
    assert fresh_dataset.count("caption") == 48


def _form_errors(uri, dataset, params):
    import fiftyone.operators as foo
    from fiftyone.operators.executor import ExecutionContext

    ctx = ExecutionContext(request_params=dict(dataset_name=dataset.name, params=params))
    form = foo.get_operator(uri).resolve_input(ctx)
    return form_errors(form)


def test_invalid_inputs_are_flagged_at_their_fields_with_their_labels(fresh_dataset):
    caption = _form_errors(
        URI,
        fresh_dataset,
        dict(model="no-such-model", field="gt_label", max_new_tokens=500, shard="3/2", batch_size=0),
    )
    assert set(caption) == {"model", "field", "max_new_tokens", "shard", "batch_size"}, caption
    assert caption["max_new_tokens"] == "Max new tokens must be from 1 to 128, got 500"
    assert "holds Classification values, not text" in caption["field"]
    assert "must be shapes-tiny or a hub id" in caption["model"] and "'no-such-model'" in caption["model"]

    heatmaps = _form_errors(
        "@fiftyone-blip/blip/compute_heatmaps",
        fresh_dataset,
        dict(model="shapes-tiny", text_source="field", text_field="no_such_field", layers="99", map_size=4),
    )
    assert set(heatmaps) == {"text_field", "layers", "map_size"}, heatmaps
    assert "out of range for a 2-layer text model" in heatmaps["layers"]

    embed = _form_errors("@fiftyone-blip/blip/compute_embeddings", fresh_dataset, dict(brain_key="my key"))
    assert set(embed) == {"brain_key"} and "letters, digits and underscores" in embed["brain_key"]

    qa = _form_errors("@fiftyone-blip/blip/find_mislabels", fresh_dataset, dict(label_field="gt_label", tag=" "))
    assert qa == {"tag": "Tag must not be empty"}


def test_a_failed_run_tells_the_app_why(fresh_dataset):
    import fiftyone.operators as foo
    from fiftyone.operators.executor import ExecutionContext, Executor

    operator = foo.get_operator(URI)
    ctx = ExecutionContext(
        request_params=dict(
            dataset_name=fresh_dataset.name,
            params=dict(model="Salesforce/not-cached-here", field="caption", view_target="DATASET"),
        ),
        executor=Executor(),
    )
    messages = []
    with pytest.raises(Exception, match="not in the local Hugging Face cache"):
        for message in operator.execute(ctx):
            messages.append(message.body)
    notices = [m.params for m in messages if m.operator_uri == "notify"]
    assert len(notices) == 1 and notices[0]["variant"] == "error"
    assert notices[0]["message"].startswith("BLIP: caption samples failed: cannot load 'Salesforce/not-cached-here'")
    assert "\n" not in notices[0]["message"]


def test_search_by_text_sets_the_view_to_the_reranked_results_in_order(fresh_dataset):
    import fiftyone.operators as foo

    import fiftyone_blip

    fiftyone_blip.embed(fresh_dataset, model="shapes-tiny", progress=False, num_workers=0)
    expected = fiftyone_blip.search(fresh_dataset, "a red circle", k=5, rerank=True).values("id")
    result = foo.execute_operator(
        "@fiftyone-blip/blip/search_by_text",
        ctx=dict(dataset=fresh_dataset, params=dict(query="a red circle", k=5, brain_key="blip_sim", rerank=True)),
    )
    result.raise_exceptions()
    assert result.result["ids"] == expected
    assert _form_errors("@fiftyone-blip/blip/search_by_text", fresh_dataset, dict(query="x", k=49)) == {
        "k": "Results (k) must be at most the number of samples searched (48), got 49"
    }


def test_label_qa_form_suggests_a_label_field_not_a_plain_string(fresh_dataset):
    import fiftyone.operators as foo
    from fiftyone.operators.executor import ExecutionContext

    fresh_dataset.set_values("split", ["train"] * len(fresh_dataset))  # a string field before the labels
    ctx = ExecutionContext(request_params=dict(dataset_name=fresh_dataset.name, params={}))
    form = foo.get_operator("@fiftyone-blip/blip/find_mislabels").resolve_input(ctx)
    assert form.type.properties["label_field"].default == "gt_label"


def test_label_qa_notice_counts_samples_without_a_label(fresh_dataset):
    import fiftyone.operators as foo
    from fiftyone.operators.executor import ExecutionContext, Executor

    for sample in fresh_dataset.limit(3):
        sample["gt_label"] = None
        sample.save()
    ctx = ExecutionContext(
        request_params=dict(
            dataset_name=fresh_dataset.name,
            params=dict(label_field="gt_label", model="shapes-tiny", view_target="DATASET", margin=False),
        ),
        executor=Executor(),
    )
    messages = [m.body for m in foo.get_operator("@fiftyone-blip/blip/find_mislabels").execute(ctx)]
    notices = [m.params["message"] for m in messages if m.operator_uri == "notify"]
    assert len(notices) == 1 and "of 45 samples" in notices[0], notices
    assert "3 samples without a label were not scored" in notices[0]


def test_large_targets_are_offered_for_scheduling_first(fresh_dataset, monkeypatch):
    import sys

    import fiftyone.operators as foo
    from fiftyone.operators.executor import ExecutionContext

    from fiftyone_blip.app.base import EngineOperator

    operator = foo.get_operator(URI)
    module = sys.modules[EngineOperator.__module__]
    ctx = ExecutionContext(request_params=dict(dataset_name=fresh_dataset.name, params=dict(view_target="DATASET")))
    options = operator.resolve_execution_options(ctx)
    assert options.allow_immediate_execution and options.allow_delegated_execution
    assert not options.default_choice_to_delegated  # 48 samples
    monkeypatch.setattr(module, "DELEGATE_ABOVE", 40)
    options = operator.resolve_execution_options(ctx)
    assert options.allow_immediate_execution and options.default_choice_to_delegated


def _scheduled(dataset, params):
    """Schedules a caption run on the whole dataset, runs the queue as a launcher does: the operation."""
    import fiftyone.operators as foo
    from fiftyone.operators.delegated import DelegatedOperationService

    foo.execute_operator(
        URI, ctx=dict(dataset=dataset, params={**params, "view_target": "DATASET"}), request_delegation=True
    ).raise_exceptions()
    service = DelegatedOperationService()
    queued = service.list_operations(dataset_name=dataset.name, run_state="queued")
    service.execute_queued_operations(dataset_name=dataset.name)
    return service.get(queued[0].id)


def test_a_failed_scheduled_run_is_recorded_with_its_reason(fresh_dataset):

    failed = _scheduled(fresh_dataset, dict(model="Salesforce/not-cached-here", field="caption"))
    assert failed.run_state == "failed"
    assert "cannot load 'Salesforce/not-cached-here'" in str(failed.result.error)
    assert "caption" not in fresh_dataset.get_field_schema()


def test_a_run_into_a_field_of_another_run_is_flagged_in_the_form_before_execute(fresh_dataset):
    """The form runs the engine's own preflight: the field's input is invalid (Execute disabled) and says
    which settings differ, until "Recompute" is ticked or another field is chosen."""
    import fiftyone_blip

    fiftyone_blip.caption(fresh_dataset.limit(5), model="shapes-tiny", progress=False)
    beam = dict(model="shapes-tiny", field="caption", strategy="beam", num_beams=3)
    errors = _form_errors(URI, fresh_dataset, beam)
    assert set(errors) == {"field"}, errors
    assert "already holds values on 5 samples" in errors["field"]
    assert "they came from 'shapes-tiny' with num_beams=None, strategy='greedy'" in errors["field"]
    assert "this run: num_beams=3, strategy='beam'" in errors["field"]
    assert _form_errors(URI, fresh_dataset, {**beam, "overwrite": True}) == {}
    assert _form_errors(URI, fresh_dataset, {**beam, "field": "caption_beam"}) == {}
    # the same greedy settings: those samples are resumed, nothing to flag
    assert _form_errors(URI, fresh_dataset, dict(model="shapes-tiny", field="caption")) == {}
    # as the App sends them: JSON has one number type, the float setting 1.0 arrives as 1
    sent = dict(model="shapes-tiny", field="caption", repetition_penalty=1, temperature=1, top_p=1)
    assert _form_errors(URI, fresh_dataset, sent) == {}
    # answers into the labels a user wrote (the same type: only the preflight sees them)
    asked = _form_errors(
        "@fiftyone-blip/blip/ask_question",
        fresh_dataset,
        dict(model="shapes-tiny", question="what shape is it?", field="gt_label"),
    )
    assert "'gt_label' already holds values on 48 samples that were not written by fiftyone-blip" in asked["field"]


def _break_images(dataset, count):
    """Points `count` samples at images that are not there: a run fails on them, with the reason."""
    broken = dataset.limit(count)
    broken.set_values("filepath", [f"/nonexistent/missing-{n}.png" for n in range(count)])
    return broken.values("id")


def _run_in_app(uri, dataset, params):
    """An immediate run as the App starts it: the messages it sends the App."""
    import fiftyone.operators as foo
    from fiftyone.operators.executor import ExecutionContext, Executor

    ctx = ExecutionContext(request_params=dict(dataset_name=dataset.name, params=params), executor=Executor())
    return [m.body for m in foo.get_operator(uri).execute(ctx)]


def test_a_scheduled_run_returns_its_outcome_as_the_operations_result(fresh_dataset):
    """`fiftyone delegated info` and the App's runs list show the operation's result: the summary,
    its counts and the reasons of the samples that failed."""
    import json

    _break_images(fresh_dataset, 2)
    done = _scheduled(fresh_dataset, dict(model="shapes-tiny", field="caption"))
    assert done.run_state == "completed", done.result
    outcome = done.result.result
    json.dumps(outcome)  # stored as the operation's JSON record
    assert (outcome["done"], outcome["failed"], outcome["total"]) == (46, 2, 48)
    assert outcome["summary"].startswith("BLIP captions: 46 done, 2 failed")
    assert "2 samples failed (2: " in outcome["summary"]
    assert list(outcome["failures"].values()) == [2] and outcome["error_field"] == "caption_error"
    assert outcome["result"]["field"] == "caption" and outcome["result"]["done"] == 46
    assert fresh_dataset.count("caption") == 46
    # the App's view of the run shows the outcome through the operator's outputs
    shown = done.metadata["outputs_schema"]["type"]["properties"]
    assert {"summary", "done", "failed", "skipped", "total", "failures"} <= set(shown)


def test_failures_are_counted_and_their_samples_offered_in_one_click(fresh_dataset):
    import fiftyone.operators as foo
    from fiftyone.operators.executor import ExecutionContext

    broken = _break_images(fresh_dataset, 3)
    messages = _run_in_app(URI, fresh_dataset, dict(model="shapes-tiny", field="caption", view_target="DATASET"))
    uris = [m.operator_uri for m in messages]
    assert uris[-4:] == ["reload_dataset", SHOW_GROUPS, "notify", "show_output"], uris
    notice = messages[-2].params
    assert notice["variant"] == "warning" and "3 samples failed (3: " in notice["message"]
    # the run's dialog shows the outcome with one button: the failed samples' view
    shown = messages[-1].params["outputs"]["type"]["properties"]
    button = shown["show_failed"]["view"]
    assert button["operator"] == "@fiftyone-blip/blip/show_failed_samples"
    assert button["params"] == {"error_field": "caption_error"}
    prompt = {"params": button["params"]}

    show = "@fiftyone-blip/blip/show_failed_samples"
    form = foo.get_operator(show).resolve_input(
        ExecutionContext(request_params=dict(dataset_name=fresh_dataset.name, params=prompt["params"]))
    )
    assert form.type.properties["error_field"].default == "caption_error"
    assert "3 samples:" in form.type.properties["reasons"].default
    result = foo.execute_operator(show, ctx=dict(dataset=fresh_dataset, params=prompt["params"]))
    result.raise_exceptions()
    assert result.result == {"error_field": "caption_error", "samples": 3}
    assert set(fresh_dataset.exists("caption_error").values("id")) == set(broken)


def test_a_run_without_failures_offers_no_failed_samples(fresh_dataset):
    messages = _run_in_app(URI, fresh_dataset, dict(model="shapes-tiny", view_target="DATASET"))
    assert [m.operator_uri for m in messages[-3:]] == ["reload_dataset", SHOW_GROUPS, "notify"]
    assert messages[-1].params["variant"] == "success"
    assert _form_errors("@fiftyone-blip/blip/show_failed_samples", fresh_dataset, {}) == {"not_ready": ""}


def test_runs_are_listed_opened_and_deleted_from_the_app(fresh_dataset):
    """The runs operator: the records with settings and counts, the view a run was made on, and a
    deletion that lists what goes and runs only once confirmed (the library's `delete_run`)."""
    import fiftyone.operators as foo
    from fiftyone.operators.executor import ExecutionContext

    import fiftyone_blip

    uri = "@fiftyone-blip/blip/manage_runs"
    fiftyone_blip.caption(fresh_dataset.limit(5), model="shapes-tiny", progress=False)
    key = "blip_caption_caption"

    def form(params):
        ctx = ExecutionContext(request_params=dict(dataset_name=fresh_dataset.name, params=params))
        return foo.get_operator(uri).resolve_input(ctx)

    listed = form({})
    assert listed.type.properties["run_key"].default == key
    records = listed.type.properties["records"].default
    assert "**completed**: 5 done, 0 failed, 0 skipped of 5" in records and "strategy='greedy'" in records
    assert set(form_errors(listed)) == {"not_ready"}  # nothing to execute yet

    opened = foo.execute_operator(uri, ctx=dict(dataset=fresh_dataset, params=dict(run_key=key, action="load_view")))
    opened.raise_exceptions()
    assert opened.result == {"run_key": key, "view": "loaded"}
    # a run on the whole dataset was made on the dataset itself
    fiftyone_blip.caption(fresh_dataset, model="shapes-tiny", field="whole", progress=False)
    whole = dict(run_key="blip_caption_whole", action="load_view")
    opened = foo.execute_operator(uri, ctx=dict(dataset=fresh_dataset, params=whole))
    opened.raise_exceptions()
    assert opened.result == {"run_key": "blip_caption_whole", "view": "loaded"}

    asked = form(dict(run_key=key, action="delete"))
    warning = asked.type.properties["warning"].view.description
    assert "fields: caption, caption_confidence, caption_error, caption_run" in warning
    assert set(form_errors(asked)) == {"not_ready"}  # Execute disabled until confirmed
    with pytest.raises(Exception, match="Validation error"):
        foo.execute_operator(
            uri, ctx=dict(dataset=fresh_dataset, params=dict(run_key=key, action="delete"))
        ).raise_exceptions()
    assert "caption" in fresh_dataset.get_field_schema()

    assert form_errors(form(dict(run_key=key, action="delete", confirm=True))) == {}
    deleted = foo.execute_operator(
        uri, ctx=dict(dataset=fresh_dataset, params=dict(run_key=key, action="delete", confirm=True))
    )
    deleted.raise_exceptions()
    assert deleted.result["fields"] == ["caption", "caption_confidence", "caption_error", "caption_run"]
    fresh_dataset.reload()
    assert not {"caption", "caption_run"} & set(fresh_dataset.get_field_schema())
    assert key not in fresh_dataset.list_runs()


def test_label_qa_capfilt_and_evaluation_forms_flag_a_field_of_another_run_before_execute(fresh_dataset):
    """The same engine preflight in the label QA, CapFilt and evaluation forms (their capability's own
    `task_for`): a field holding another run's values is flagged, and "Recompute" clears it."""
    import fiftyone_blip

    part = fresh_dataset.limit(4)
    # (over the whole dataset: a part may hold fewer classes, and other classes are other settings)
    fiftyone_blip.find_mislabels(fresh_dataset, "gt_label", model="shapes-tiny", margin=False, progress=False)
    qa = dict(label_field="gt_label", model="shapes-tiny", margin=True, view_target="DATASET")
    errors = _form_errors("@fiftyone-blip/blip/find_mislabels", fresh_dataset, qa)
    assert set(errors) == {"field"}, errors
    assert "'gt_label_match' already holds values on 48 samples" in errors["field"]
    assert "margin=False" in errors["field"] and "margin=True" in errors["field"]
    assert _form_errors("@fiftyone-blip/blip/find_mislabels", fresh_dataset, {**qa, "overwrite": True}) == {}
    assert _form_errors("@fiftyone-blip/blip/find_mislabels", fresh_dataset, {**qa, "margin": False}) == {}

    fiftyone_blip.capfilt(
        part,
        "gt_caption",
        "kept",
        caption_model="shapes-tiny",
        match_model="shapes-tiny",
        threshold=0.5,
        progress=False,
    )
    capfilt = dict(
        caption_field="gt_caption",
        out_field="kept",
        caption_model="shapes-tiny",
        match_model="shapes-tiny",
        threshold=0.9,
        view_target="DATASET",
    )
    errors = _form_errors("@fiftyone-blip/blip/clean_captions", fresh_dataset, capfilt)
    assert len(errors) == 1 and "'kept' already holds values on 4 samples" in next(iter(errors.values())), errors
    assert "threshold=0.5" in next(iter(errors.values()))
    assert _form_errors("@fiftyone-blip/blip/clean_captions", fresh_dataset, {**capfilt, "overwrite": True}) == {}
    assert _form_errors("@fiftyone-blip/blip/clean_captions", fresh_dataset, {**capfilt, "out_field": "k2"}) == {}

    fresh_dataset.set_values("pred", fresh_dataset.values("gt_caption"))
    fiftyone_blip.evaluate_captions(part, "pred", "gt_caption", "ev", itm=False, progress=False)
    evaluation = dict(pred_field="pred", gt_field="gt_caption", eval_key="ev", itm=False, view_target="DATASET")
    # the whole dataset is another corpus than the 4 samples evaluated: another result in the same fields
    errors = _form_errors("@fiftyone-blip/blip/evaluate_captions", fresh_dataset, evaluation)
    assert len(errors) == 1 and "already holds values on 4 samples" in next(iter(errors.values())), errors
    assert _form_errors("@fiftyone-blip/blip/evaluate_captions", fresh_dataset, {**evaluation, "overwrite": True}) == {}
