"""Label QA that ends in a fix: suggested classes, applying and undoing them, clearing flags."""

import pytest
from click.testing import CliRunner
from label_noise import swap_class_labels, swap_object_labels

import fiftyone_blip

URI = "@fiftyone-blip/blip/fix_mislabels"


def _flagged_with_truth(dataset, count=5, seed=3):
    """Swaps `count` class labels, scores and flags them; returns (wrong ids, true label per sample id)."""
    truth = dict(zip(*dataset.values(["id", "gt_label.label"])))
    wrong = swap_class_labels(dataset, count, seed=seed)
    fiftyone_blip.find_mislabels(dataset, "gt_label", model="shapes-tiny", progress=False, num_workers=0)
    return wrong, truth


def _labels(dataset, field="gt_label"):
    return {sample_id: label.to_dict() for sample_id, label in zip(*dataset.values(["id", field]))}


def test_the_suggestion_is_the_best_class_with_its_probability(fresh_dataset):
    wrong, truth = _flagged_with_truth(fresh_dataset)
    labels = fresh_dataset.values("gt_label")
    for label in labels:
        p, margin = label["gt_label_match_itm"], label["gt_label_match_margin"]
        # the margin is p minus the best other class's: the best class is the label itself or that one
        assert label["gt_label_match_suggested_p"] == pytest.approx(max(p, p - margin), abs=1e-6)
        assert (label["gt_label_match_suggested"] == label.label) == (margin >= 0)
        assert label["gt_label_match_scored_label"] == label.label
    # per sample: the one label's suggestion
    suggested, probability = fresh_dataset.values(["gt_label_match_suggested", "gt_label_match_suggested_p"])
    assert suggested == [label["gt_label_match_suggested"] for label in labels]
    assert probability == [label["gt_label_match_suggested_p"] for label in labels]
    # the injected errors: the suggestion names a shape of the image, mostly the largest (the true class);
    # another shape of the image where it has several (benchmarks/eval_mislabels.py --suggest)
    flagged = fresh_dataset.match_tags("mislabel").select(sorted(wrong))
    suggestions = {s.id: s.gt_label["gt_label_match_suggested"] for s in flagged}
    assert all(suggestions[s.id] in {d.label for d in s.gt_objects.detections} for s in flagged)
    assert len(flagged) >= 4 and sum(suggestions[i] == truth[i] for i in suggestions) >= 2
    run = fiftyone_blip.runs(fresh_dataset)[-1]
    assert "gt_label_match_suggested" in fresh_dataset.get_field_schema()
    assert run["capability"] == "match"


def test_apply_keeps_the_old_label_and_undo_restores_it_exactly(fresh_dataset):
    wrong, truth = _flagged_with_truth(fresh_dataset)
    before = _labels(fresh_dataset)
    review = fresh_dataset.load_saved_view("gt-label-match-review")
    flagged = set(review.values("id"))
    result = fiftyone_blip.apply_suggestions(review, "gt_label")
    changed = {i for i, label in _labels(fresh_dataset).items() if label["label"] != before[i]["label"]}
    assert result["applied"] == len(changed) and result["edited"] == 0 and changed <= flagged
    for sample_id in changed:
        label = fresh_dataset[sample_id].gt_label
        assert label.label == label["gt_label_match_suggested"]
        assert label["label_before_suggestion"] == before[sample_id]["label"]
        assert label["suggestion_applied_at"] is not None
    assert len(changed & wrong) >= 4 and sum(fresh_dataset[i].gt_label.label == truth[i] for i in changed) >= 2
    # applying again changes nothing
    assert fiftyone_blip.apply_suggestions(review, "gt_label")["applied"] == 0
    undone = fiftyone_blip.undo_suggestions(fresh_dataset, "gt_label")
    assert undone["restored"] == len(changed) and _labels(fresh_dataset) == before


def test_undo_works_after_the_run_is_deleted_or_run_again(fresh_dataset, plugin_installed):
    import fiftyone.operators as foo
    from fiftyone.operators.executor import ExecutionContext

    _flagged_with_truth(fresh_dataset)
    before = fresh_dataset.values("gt_label.label")
    applied = fiftyone_blip.apply_suggestions(fresh_dataset.load_saved_view("gt-label-match-review"), "gt_label")
    assert applied["applied"] >= 3
    changed = fresh_dataset.exists("gt_label.label_before_suggestion").values("id")
    # a rerun scores the applied labels: its suggestions are not the ones applied
    fiftyone_blip.find_mislabels(
        fresh_dataset, "gt_label", model="shapes-tiny", progress=False, num_workers=0, overwrite=True
    )
    fiftyone_blip.delete_run(fresh_dataset, fiftyone_blip.runs(fresh_dataset)[-1]["run_key"])
    assert "gt_label.gt_label_match_suggested" not in fresh_dataset.get_field_schema(flat=True)
    # the App's form still offers the way back, and only that
    form = foo.get_operator(URI).resolve_input(
        ExecutionContext(request_params=dict(dataset_name=fresh_dataset.name, params={}))
    )
    assert [c.value for c in form.type.properties["mode"].view.choices] == ["undo"]
    assert _run_fix(fresh_dataset, changed[:1], mode="undo")["restored"] == 1
    undone = fiftyone_blip.undo_suggestions(fresh_dataset, "gt_label")
    assert undone["restored"] == applied["applied"] - 1 and fresh_dataset.values("gt_label.label") == before
    assert not any(
        set(label) & {"label_before_suggestion", "suggestion_applied"} for label in _labels(fresh_dataset).values()
    )


def test_labels_applied_before_suggestion_applied_was_stored_still_undo(fresh_dataset):
    _flagged_with_truth(fresh_dataset)
    before = _labels(fresh_dataset)
    applied = fiftyone_blip.apply_suggestions(fresh_dataset.load_saved_view("gt-label-match-review"), "gt_label")
    for sample in fresh_dataset.exists("gt_label.suggestion_applied"):
        sample.gt_label.clear_field("suggestion_applied")  # as an earlier version left them
        sample.save()
    undone = fiftyone_blip.undo_suggestions(fresh_dataset, "gt_label")
    assert undone["restored"] == applied["applied"] >= 3 and _labels(fresh_dataset) == before


def test_a_label_edited_since_the_run_is_not_overwritten(fresh_dataset):
    _flagged_with_truth(fresh_dataset)
    review = fresh_dataset.load_saved_view("gt-label-match-review")
    first, second = [s.id for s in review if s.gt_label["gt_label_match_suggested"] != s.gt_label.label][:2]
    sample = fresh_dataset[first]
    sample.gt_label.label = "hexagon"  # the reviewer's own correction
    sample.save()
    result = fiftyone_blip.apply_suggestions(review, "gt_label")
    assert result["edited"] == 1 and fresh_dataset[first].gt_label.label == "hexagon"
    assert not fresh_dataset[first].gt_label.has_field("label_before_suggestion")
    # an applied label edited again is not undone either
    sample = fresh_dataset[second]
    sample.gt_label.label = "star"
    sample.save()
    undone = fiftyone_blip.undo_suggestions(fresh_dataset, "gt_label")
    assert undone["edited"] == 1 and undone["restored"] == result["applied"] - 1
    assert fresh_dataset[second].gt_label.label == "star"


def test_apply_changes_only_the_flagged_objects_of_the_view(fresh_dataset):
    wrong = swap_object_labels(fresh_dataset, 4, seed=4)
    fiftyone_blip.find_mislabels(
        fresh_dataset, "gt_objects", model="shapes-tiny", level="label", top_k=4, progress=False, num_workers=0
    )
    before = _labels(fresh_dataset, "gt_objects")
    review = fresh_dataset.load_saved_view("gt-objects-match-review")
    result = fiftyone_blip.apply_suggestions(review, "gt_objects")
    objects = [d for dets in fresh_dataset.values("gt_objects.detections") for d in dets]
    changed = {d.id for d in objects if d.has_field("label_before_suggestion")}
    flagged = {d.id for d in objects if d["gt_objects_match_flagged"]}
    assert result["applied"] == len(changed) >= 3 and changed <= flagged and len(changed & wrong) >= 3
    fiftyone_blip.undo_suggestions(fresh_dataset, "gt_objects")
    assert _labels(fresh_dataset, "gt_objects") == before


def test_clear_removes_only_the_tag(fresh_dataset):
    _flagged_with_truth(fresh_dataset)
    flagged = set(fresh_dataset.match_tags("mislabel").values("id"))
    users = fresh_dataset.match_tags("mislabel", bool=False).first()
    users.tags.append("mislabel")  # a user's own tag on a sample the run did not flag
    users.save()
    before = _labels(fresh_dataset)
    flags = fresh_dataset.values("gt_label_match_flagged")
    chosen = sorted(flagged)[:2]
    result = fiftyone_blip.clear_flags(fresh_dataset.select(chosen), "gt_label")
    assert result["cleared_samples"] == 2 and result["tag"] == "mislabel"
    assert set(fresh_dataset.match_tags("mislabel").values("id")) == (flagged - set(chosen)) | {users.id}
    assert _labels(fresh_dataset) == before and fresh_dataset.values("gt_label_match_flagged") == flags
    fiftyone_blip.clear_flags(fresh_dataset, "gt_label")
    assert fresh_dataset.match_tags("mislabel").values("id") == [users.id]


def test_a_rerun_does_not_replace_a_users_field_of_the_suggestions_name(fresh_dataset, fo):
    fresh_dataset.add_sample_field("gt_label_match_suggested", fo.StringField)
    first = fresh_dataset.first()
    first["gt_label_match_suggested"] = "my own note"
    first.save()
    with pytest.raises(ValueError, match="gt_label_match_suggested"):
        fiftyone_blip.find_mislabels(fresh_dataset, "gt_label", model="shapes-tiny", progress=False)
    assert "gt_label_match" not in fresh_dataset.get_field_schema()
    assert fresh_dataset.first()["gt_label_match_suggested"] == "my own note"


def test_fixes_refuse_text_fields_and_unscored_fields(fresh_dataset):
    with pytest.raises(ValueError, match="free text"):
        fiftyone_blip.apply_suggestions(fresh_dataset, "gt_caption")
    with pytest.raises(ValueError, match="no applied suggestions in 'gt_label'"):
        fiftyone_blip.undo_suggestions(fresh_dataset, "gt_label")
    with pytest.raises(ValueError, match="run find_mislabels"):
        fiftyone_blip.clear_flags(fresh_dataset, "gt_label")


def test_cli_applies_undoes_and_clears(fresh_dataset):
    from fiftyone_blip.cli import main

    runner = CliRunner()
    name = fresh_dataset.name
    swap_class_labels(fresh_dataset, 4, seed=5)
    scored = runner.invoke(main, ["mislabels", name, "--label-field", "gt_label", "-m", "shapes-tiny", "-q"])
    assert scored.exit_code == 0, scored.output
    assert "have a suggested class" in scored.output and "labels apply" in scored.output
    before = _labels(fresh_dataset)
    view = ["--view", "gt-label-match-review"]
    applied = runner.invoke(main, ["labels", "apply", name, "--label-field", "gt_label", *view, "--json"])
    assert applied.exit_code == 0, applied.output
    assert '"applied": ' in applied.output and _labels(fresh_dataset) != before
    undone = runner.invoke(main, ["labels", "undo", name, "--label-field", "gt_label"])
    assert undone.exit_code == 0 and undone.output.startswith("restored ") and _labels(fresh_dataset) == before
    cleared = runner.invoke(main, ["labels", "clear", name, "--label-field", "gt_label", *view])
    assert cleared.exit_code == 0 and "removed tag 'mislabel'" in cleared.output
    assert len(fresh_dataset.match_tags("mislabel")) == 0
    bad = runner.invoke(main, ["labels", "apply", name, "--label-field", "gt_caption"])
    assert bad.exit_code == 1 and bad.output.startswith("Error: `label_field` 'gt_caption' holds free text")


def _run_fix(dataset, selected, **params):
    """Runs fix_mislabels on the selected samples through FiftyOne's operator executor; returns its result."""
    import fiftyone.operators as foo

    params = dict(view_target="SELECTED_SAMPLES", label_field="gt_label", **params)
    outcome = foo.execute_operator(URI, ctx=dict(dataset=dataset, selected=selected, params=params))
    outcome.raise_exceptions()
    return outcome.result


def test_operator_applies_and_undoes_on_the_selected_samples(fresh_dataset, plugin_installed):
    import fiftyone.operators as foo
    from fiftyone.operators.executor import ExecutionContext

    wrong, _ = _flagged_with_truth(fresh_dataset)
    operator = foo.get_operator(URI)
    form = operator.resolve_input(ExecutionContext(request_params=dict(dataset_name=fresh_dataset.name, params={})))
    assert [c.value for c in form.type.properties["label_field"].view.choices] == ["gt_label"]
    assert [c.value for c in form.type.properties["mode"].view.choices] == ["apply", "undo", "clear"]
    before = _labels(fresh_dataset)
    chosen = sorted(set(fresh_dataset.match_tags("mislabel").values("id")) & wrong)[:2]
    applied = _run_fix(fresh_dataset, chosen, mode="apply")
    changed = {i for i, label in _labels(fresh_dataset).items() if label != before[i]}
    assert applied["applied"] == 2 and changed == set(chosen)
    assert _run_fix(fresh_dataset, chosen, mode="undo")["restored"] == 2 and _labels(fresh_dataset) == before
    assert _run_fix(fresh_dataset, chosen, mode="clear")["cleared_samples"] == 2
    assert not set(chosen) & set(fresh_dataset.match_tags("mislabel").values("id"))
    assert len(fresh_dataset.match_tags("mislabel")) >= 2  # the others keep their tag
