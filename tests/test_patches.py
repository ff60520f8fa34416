"""Patches views: every capability runs on `to_patches` / `to_evaluation_patches` views, the label is
the unit of work, and the results land on the source dataset's labels under the whole write contract."""

import pytest

import fiftyone_blip as fb
from fiftyone_blip import engine, run_records

QUIET = {"progress": False, "batch_size": 16}


@pytest.fixture
def scenes(fresh_dataset):
    """The first 8 shapes images of a fresh dataset (with about 16 objects)."""
    return fresh_dataset.limit(8)


def _objects(dataset) -> int:
    return dataset.count("gt_objects.detections")


def _attribute(dataset, name: str) -> list:
    """The values of a label attribute of the objects that hold one."""
    return [v for v in dataset.values(f"gt_objects.detections.{name}", unwind=True) if v is not None]


def test_caption_on_patches_writes_each_object_caption_on_its_source_label(fresh_dataset, scenes):
    patches = scenes.to_patches("gt_objects")
    # the unit of work: a patch's id is its label's id
    assert set(patches.values("id")) == set(scenes.values("gt_objects.detections.id", unwind=True))
    summary = fb.caption(patches, model="shapes-tiny", **QUIET)
    objects = _objects(scenes)
    assert (summary.done, summary.failed, summary.skipped, summary.total) == (objects, 0, 0, objects)
    assert summary.field == "gt_objects.detections.caption"
    captions = _attribute(scenes, "caption")
    assert len(captions) == objects and all(isinstance(c, str) and c for c in captions)
    assert all(0 < c <= 1 for c in _attribute(scenes, "caption_confidence"))
    assert fresh_dataset.skip(8).count("gt_objects.detections.caption") == 0  # only the view's objects
    # no sample field was made; the view shows the labels' results at once, as a new view does
    assert "caption" not in fresh_dataset.get_field_schema()
    ids, stored = scenes.values(["gt_objects.detections.id", "gt_objects.detections.caption"], unwind=True)
    by_id = dict(zip(ids, stored))
    assert patches.values("gt_objects.caption") == [by_id[label_id] for label_id in patches.values("id")]
    assert scenes.to_patches("gt_objects").values("gt_objects.caption") == patches.values("gt_objects.caption")
    field = fresh_dataset.get_field("gt_objects.detections.caption")
    assert field.info["written_by"] == "fiftyone-blip" and field.description.startswith("caption of the image")
    record = fb.runs(fresh_dataset)[-1]
    assert (record["done"], record["total"], record["settings"]["context"]) == (objects, objects, 1.0)
    assert "blip_caption_gt_objects__caption" in fresh_dataset.list_runs()


def test_a_rerun_skips_labels_done_and_finishes_the_rest(fresh_dataset, scenes):
    patches = scenes.to_patches("gt_objects")
    first = fb.caption(patches.limit(5), model="shapes-tiny", **QUIET)
    assert first.done == 5
    again = fb.caption(scenes.to_patches("gt_objects"), model="shapes-tiny", **QUIET)
    objects = _objects(scenes)
    assert (again.done, again.skipped, again.total) == (objects - 5, 5, objects)
    runs = [r for r in fb.runs(fresh_dataset) if r["capability"] == "caption"]
    assert [(r["done"], r["skipped"], r["status"]) for r in runs] == [
        (5, 0, "completed"),
        (objects - 5, 5, "completed"),
    ]
    # another context is another result: refused without overwrite (naming the difference), then replaced
    with pytest.raises(
        ValueError, match=r"'gt_objects.detections.caption' already holds values on \d+ labels"
    ) as error:
        fb.caption(patches, model="shapes-tiny", context=2.0, **QUIET)
    assert "context=1.0" in str(error.value) and "context=2.0" in str(error.value)
    redone = fb.caption(patches, model="shapes-tiny", context=2.0, overwrite=True, **QUIET)
    assert (redone.done, redone.skipped) == (objects, 0)


def _snapshot(dataset):
    """Every sample's labels as stored, and the schema."""
    docs = list(dataset._sample_collection.find({}, {"gt_objects": 1, "last_modified_at": 1}))
    return docs, sorted(dataset.get_field_schema(flat=True))


def test_a_users_attribute_of_the_same_name_is_refused_and_nothing_is_written(fresh_dataset, scenes):
    sample = scenes.first()
    sample.gt_objects.detections[0]["caption"] = "my own words"
    sample.save()
    before = _snapshot(fresh_dataset)
    for patches in (scenes.to_patches("gt_objects"), fresh_dataset.to_patches("gt_objects")):
        with pytest.raises(ValueError, match=r"'gt_objects.detections.caption' already holds values on 1 labels"):
            fb.caption(patches, model="shapes-tiny", **QUIET)
    assert engine.patches.of_whole(fresh_dataset.to_patches("gt_objects"))
    assert not engine.patches.of_whole(scenes.to_patches("gt_objects"))
    assert not engine.patches.of_whole(fresh_dataset.to_patches("gt_objects").limit(3))
    assert _snapshot(fresh_dataset) == before
    assert fresh_dataset.first().gt_objects.detections[0]["caption"] == "my own words"
    assert not fb.runs(fresh_dataset)


def test_a_second_run_while_a_claim_is_held_is_refused(fresh_dataset, scenes):
    lease = run_records.Lease(fresh_dataset, ["gt_objects.detections.caption"], None, "other-run")
    lease.take()
    try:
        before = _snapshot(fresh_dataset)
        with pytest.raises(ValueError, match=r"is being written by run other-run"):
            fb.caption(scenes.to_patches("gt_objects"), model="shapes-tiny", **QUIET)
        assert _snapshot(fresh_dataset) == before
    finally:
        lease.release()
    # a run into the sample field `caption` is not in the way of the labels' one
    lease = run_records.Lease(fresh_dataset, ["caption"], None, "other-run")
    lease.take()
    try:
        assert fb.caption(scenes.to_patches("gt_objects").limit(3), model="shapes-tiny", **QUIET).done == 3
    finally:
        lease.release()


def test_context_is_refused_on_whole_images(fresh_dataset):
    before = _snapshot(fresh_dataset)
    with pytest.raises(ValueError, match="`context` .* grows the boxes of a patches view"):
        fb.caption(fresh_dataset, model="shapes-tiny", context=2.0, **QUIET)
    assert _snapshot(fresh_dataset) == before


def test_ask_on_patches_answers_each_object_on_its_source_label(fresh_dataset, scenes):
    questions = (["what shape is it?", "is it red?"], ["shape", "red"])
    summary = fb.ask(scenes.to_patches("gt_objects"), *questions, boolean=[False, True], model="shapes-tiny", **QUIET)
    objects = _objects(scenes)
    assert (summary.done, summary.failed) == (objects, 0)
    shapes = _attribute(scenes, "shape")
    assert len(shapes) == objects and all(answer.label for answer in shapes)
    assert {type(value) for value in _attribute(scenes, "red")} == {bool}
    again = fb.ask(scenes.to_patches("gt_objects"), *questions, boolean=[False, True], model="shapes-tiny", **QUIET)
    assert (again.done, again.skipped) == (0, objects)


def test_embed_on_patches_builds_a_patches_index_that_a_text_query_searches(fresh_dataset, scenes):
    patches = scenes.to_patches("gt_objects")
    summary = fb.embed(patches, model="shapes-tiny", brain_key="obj_sim", **QUIET)
    objects = _objects(scenes)
    assert summary.done == objects
    vectors = _attribute(scenes, "blip_embedding")
    assert len(vectors) == objects and all(abs(float((v**2).sum()) - 1) < 1e-4 for v in vectors)
    info = fresh_dataset.get_brain_info("obj_sim")
    assert info.config.patches_field == "gt_objects"
    found = patches.sort_by_similarity("a red circle", k=5, brain_key="obj_sim")
    assert len(found) == 5 and set(found.values("id")) <= set(patches.values("id"))
    # the boxes it ranks first are mostly red circles: the crops carry the object
    labels = found.values("gt_objects.label")
    colours = found.values("gt_objects.colour")
    assert sum(label == "circle" or colour == "red" for label, colour in zip(labels, colours)) >= 3


def test_heatmaps_refuse_patches_views_in_one_line_and_change_nothing(fresh_dataset, scenes):
    before = _snapshot(fresh_dataset)
    with pytest.raises(ValueError, match="word heatmaps do not run on patches views") as error:
        fb.heatmaps(scenes.to_patches("gt_objects"), model="shapes-tiny", text="a shape", **QUIET)
    assert "\n" not in str(error.value)
    assert _snapshot(fresh_dataset) == before and not fb.runs(fresh_dataset)


def test_evaluation_patches_write_each_patch_label(fresh_dataset, scenes):
    import fiftyone as fo

    predictions = []
    for detections in scenes.values("gt_objects"):
        kept = [fo.Detection(label=d.label, bounding_box=d.bounding_box) for d in detections.detections[1:]]
        kept.append(fo.Detection(label="circle", bounding_box=[0.0, 0.0, 0.2, 0.2]))
        predictions.append(fo.Detections(detections=kept))
    scenes.set_values("pred", predictions)
    scenes.evaluate_detections("pred", gt_field="gt_objects", eval_key="ev")
    patches = scenes.to_evaluation_patches("ev")
    summary = fb.caption(patches, model="shapes-tiny", field="cap", **QUIET)
    assert summary.done == len(patches)
    gt_ids = set(patches.values("id")) & set(scenes.values("gt_objects.detections.id", unwind=True))
    pred_ids = set(patches.values("id")) - gt_ids
    on_gt = dict(zip(*scenes.values(["gt_objects.detections.id", "gt_objects.detections.cap"], unwind=True)))
    on_pred = dict(zip(*scenes.values(["pred.detections.id", "pred.detections.cap"], unwind=True)))
    assert gt_ids and pred_ids  # true positives and false negatives; unmatched predictions
    assert all(on_gt[i] for i in gt_ids) and all(on_pred[i] for i in pred_ids)
    # a matched prediction is not a patch's own label: it gets nothing
    assert sum(1 for i, value in on_pred.items() if i not in pred_ids and value is not None) == 0


def test_the_cli_runs_caption_and_embed_on_the_objects_of_a_label_field(fresh_dataset):
    from click.testing import CliRunner

    from fiftyone_blip.cli import main

    fresh_dataset.save_view("few", fresh_dataset.limit(4))
    args = [fresh_dataset.name, "--view", "few", "--patches", "gt_objects", "-m", "shapes-tiny", "-q", "--json"]
    result = CliRunner().invoke(main, ["caption", *args, "--context", "1.5"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    objects = _objects(fresh_dataset.limit(4))
    assert f'"done": {objects}' in result.output and '"field": "gt_objects.detections.caption"' in result.output
    assert len(_attribute(fresh_dataset, "caption")) == objects
    result = CliRunner().invoke(main, ["embed", *args, "-b", "obj_sim"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert fresh_dataset.get_brain_info("obj_sim").config.patches_field == "gt_objects"
    result = CliRunner().invoke(
        main, ["mislabels", *args[:-1], "--label-field", "gt_objects", "--top-k", "2", "--context", "3"]
    )
    assert result.exit_code == 0, result.output
    assert "flagged" in result.output and len(_attribute(fresh_dataset, "gt_objects_match_itm")) == objects
    result = CliRunner().invoke(main, ["caption", fresh_dataset.name, "--patches", "gt_caption", "-q"])
    assert result.exit_code == 1 and "--patches gt_caption" in result.output and "\n" not in result.output.strip()


def test_find_mislabels_on_patches_scores_and_flags_the_views_objects_on_their_source_labels(fresh_dataset, scenes):
    from fiftyone import ViewField as F

    patches = scenes.to_patches("gt_objects").match(F("gt_objects.label") != "star")
    chosen = set(patches.values("id"))
    result = fb.find_mislabels(patches, "gt_objects", model="shapes-tiny", top_k=2, context=3.0, **QUIET)
    ids, scores = fresh_dataset.values(
        ["gt_objects.detections.id", "gt_objects.detections.gt_objects_match_itm"], unwind=True
    )
    scored = {i for i, score in zip(ids, scores) if score is not None}
    assert scored == chosen and result["run"].failed == 0
    assert result["flagged_samples"] >= 1
    assert fb.runs(fresh_dataset)[-1]["settings"]["crop_padding"] == 3.0
    with pytest.raises(ValueError, match="`label_field` 'pred' is not a label field of the patches view"):
        fb.find_mislabels(patches, "pred", model="shapes-tiny", **QUIET)


def test_the_app_operators_run_on_the_current_patches_view_and_its_selected_patches(
    fresh_dataset, scenes, plugin_installed
):
    import fiftyone.operators as foo
    from app_forms import form_errors
    from fiftyone.operators.executor import ExecutionContext

    patches = scenes.to_patches("gt_objects")
    uri = "@fiftyone-blip/blip/caption_samples"
    params = dict(model="shapes-tiny", field="caption", context=1.5, view_target="CURRENT_VIEW")
    result = foo.execute_operator(uri, ctx=dict(view=patches, params=params))
    result.raise_exceptions()
    assert len(_attribute(scenes, "caption")) == _objects(scenes)
    assert "caption" not in fresh_dataset.get_field_schema()
    # selected patches: only their labels
    chosen = patches.take(3, seed=1).values("id")
    params = dict(model="shapes-tiny", field="other", view_target="SELECTED_SAMPLES")
    result = foo.execute_operator(uri, ctx=dict(view=patches, selected=chosen, params=params))
    result.raise_exceptions()
    ids, values = fresh_dataset.values(["gt_objects.detections.id", "gt_objects.detections.other"], unwind=True)
    assert {i for i, value in zip(ids, values) if value} == set(chosen)
    # the form runs the engine's preflight on the patches view: another context is flagged at the field
    request = dict(
        dataset_name=fresh_dataset.name,
        view=patches._serialize(),
        params=dict(model="shapes-tiny", field="caption", context=2.0, view_target="CURRENT_VIEW"),
    )
    errors = form_errors(foo.get_operator(uri).resolve_input(ExecutionContext(request_params=request)))
    assert set(errors) == {"field"} and "'gt_objects.detections.caption' already holds values on" in errors["field"]


def test_a_view_whose_result_changes_as_the_run_writes_gets_every_object_of_its_start(fresh_dataset, scenes):
    from fiftyone import ViewField as F

    patches = scenes.to_patches("gt_objects")
    todo = patches.match(F("gt_objects.caption") == None)  # noqa: E711 - shrinks as captions are written
    summary = fb.caption(todo, model="shapes-tiny", progress=False, batch_size=2, chunk_size=2)
    assert summary.done == _objects(scenes) == len(_attribute(scenes, "caption"))


def test_deleting_a_patches_run_removes_its_label_attributes_and_record(fresh_dataset, scenes):
    fb.caption(scenes.limit(2).to_patches("gt_objects"), model="shapes-tiny", **QUIET)
    key = "blip_caption_gt_objects__caption"
    planned = "\n".join(fb.delete_run(fresh_dataset, key, dry_run=True).lines())
    assert "gt_objects.detections.caption" in planned and "gt_objects.detections.caption_run" in planned
    fb.delete_run(fresh_dataset, key)
    flat = fresh_dataset.get_field_schema(flat=True)
    assert not [name for name in flat if name.startswith("gt_objects.detections.caption")]
    assert key not in fresh_dataset.list_runs() and not _attribute(fresh_dataset, "caption")
    assert _attribute(fresh_dataset, "colour")  # the labels themselves stay


def test_patches_of_polylines_are_refused_in_one_line_and_change_nothing(fresh_dataset, scenes):
    import fiftyone as fo

    line = fo.Polyline(label="edge", points=[[(0.1, 0.1), (0.5, 0.5)]])
    scenes.set_values("lines", [fo.Polylines(polylines=[line.copy()]) for _ in range(8)])
    before = _snapshot(fresh_dataset)
    with pytest.raises(ValueError, match=r"patches of Polylines labels \(field 'lines'\) are not supported") as error:
        fb.caption(scenes.to_patches("lines"), model="shapes-tiny", **QUIET)
    assert "\n" not in str(error.value) and _snapshot(fresh_dataset) == before
