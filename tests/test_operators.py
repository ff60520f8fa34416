"""The App operators through FiftyOne's own operator execution: registry, immediate, delegated."""

import pytest
from app_forms import form_errors

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
    assert form_errors(form) == {"num_beams": "Beams must be in 1..10, got 42"}

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
    assert [m.operator_uri for m in messages[-2:]] == ["reload_dataset", "notify"]
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
    assert caption["max_new_tokens"] == "Max new tokens must be in 1..128, got 500"
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


def test_a_failed_scheduled_run_is_recorded_with_its_reason(fresh_dataset):
    import fiftyone.operators as foo
    from fiftyone.operators.delegated import DelegatedOperationService

    foo.execute_operator(
        URI,
        ctx=dict(
            dataset=fresh_dataset,
            params=dict(model="Salesforce/not-cached-here", field="caption", view_target="DATASET"),
        ),
        request_delegation=True,
    ).raise_exceptions()
    service = DelegatedOperationService()
    queued = service.list_operations(dataset_name=fresh_dataset.name, run_state="queued")
    service.execute_queued_operations(dataset_name=fresh_dataset.name)
    failed = service.get(queued[0].id)
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
    # answers into the labels a user wrote (the same type: only the preflight sees them)
    asked = _form_errors(
        "@fiftyone-blip/blip/ask_question",
        fresh_dataset,
        dict(model="shapes-tiny", question="what shape is it?", field="gt_label"),
    )
    assert "'gt_label' already holds values on 48 samples that were not written by fiftyone-blip" in asked["field"]
