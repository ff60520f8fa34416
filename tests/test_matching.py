"""Label QA: ITM / ITC scores, mislabel flags, the CLI and the operator, against a real dataset."""

import numpy as np
import pytest
from click.testing import CliRunner
from label_noise import swap_captions, swap_class_labels, swap_object_labels

import fiftyone_blip
from fiftyone_blip import mislabels

URI = "@fiftyone-blip/blip/find_mislabels"


# --- pure functions ------------------------------------------------------------------------------------------


def test_template_checks():
    assert mislabels.check_template("a photo of a {label}") == "a photo of a {label}"
    with pytest.raises(ValueError, match=r"must contain \{label\}"):
        mislabels.check_template("a photo of a thing")
    with pytest.raises(ValueError, match="only the"):
        mislabels.check_template("a {colour} {label}")
    with pytest.raises(ValueError, match="not a valid format"):
        mislabels.check_template("a {label")


def test_flag_selection_by_threshold_percentile_and_top_k():
    scores = np.array([0.9, 0.1, np.nan, 0.6, 0.3])
    assert mislabels.select_flags(scores, threshold=0.5).tolist() == [True, False, False, True, False]
    assert mislabels.select_flags(scores, top_k=1).tolist() == [True, False, False, False, False]
    assert mislabels.select_flags(scores, top_k=10).sum() == 4  # NaN (unscored) is never flagged
    assert mislabels.select_flags(scores, percentile=50).tolist() == [True, False, False, True, False]
    with pytest.raises(ValueError, match="exactly one"):
        mislabels.select_flags(scores, threshold=0.5, top_k=2)
    assert mislabels.mistakenness(itm=[1.0], margin=[1.0], method="itm+margin")[0] == 0.0
    assert mislabels.mistakenness(itm=[0.0], margin=[-1.0], method="itm+margin")[0] == 1.0
    assert mislabels.mistakenness(itc=[-1.0], method="itc")[0] == 1.0


# --- the SDK against a real dataset --------------------------------------------------------------------------


def test_captions_with_injected_errors_are_flagged(fresh_dataset):
    wrong = swap_captions(fresh_dataset, 5)
    result = fiftyone_blip.find_mislabels(
        fresh_dataset, "gt_caption", model="shapes-tiny", itc=True, top_k=5, progress=False, num_workers=0
    )
    assert result["run"].done == 48 and result["method"] == "itm"
    flagged = set(fresh_dataset.match_tags("mislabel").values("id"))
    assert len(flagged) == 5 and len(flagged & wrong) >= 4  # chance: about 0.5
    assert fresh_dataset.count("gt_caption_match") == 48 and fresh_dataset.count("gt_caption_match_itc") == 48
    review = fresh_dataset.load_saved_view(result["view"])
    scores = review.values("gt_caption_match_mistakenness")
    assert len(review) == 5 and scores == sorted(scores, reverse=True)

    # a re-run with another threshold needs no model and replaces the earlier flags
    again = fiftyone_blip.flag_mislabels(fresh_dataset, "gt_caption", method="itc", top_k=3)
    assert again["flagged_samples"] == 3 and len(fresh_dataset.match_tags("mislabel")) == 3
    assert set(fresh_dataset.match_tags("mislabel").values("id")) <= wrong


def test_the_default_rule_flags_few_clean_labels_and_finds_injected_ones(fresh_dataset):
    # clean: the earlier default (ITM + margin >= 0.5) flagged about 15% of clean class labels
    result = fiftyone_blip.find_mislabels(fresh_dataset, "gt_label", model="shapes-tiny", progress=False)
    assert result["flagged_samples"] <= 2 and result["method"] == "itm"  # at most 5% of 48
    wrong = swap_class_labels(fresh_dataset, 5, seed=3)
    fiftyone_blip.find_mislabels(fresh_dataset, "gt_label", model="shapes-tiny", progress=False, overwrite=True)
    flagged = set(fresh_dataset.match_tags("mislabel").values("id"))
    assert len(flagged & wrong) >= 4 and len(flagged - wrong) <= 2


def test_classification_labels_store_itm_and_margin_on_the_label(fresh_dataset):
    view = fresh_dataset.limit(12)
    unlabeled = view.skip(11).first()
    unlabeled.gt_label = None
    unlabeled.save()
    result = fiftyone_blip.find_mislabels(
        view, "gt_label", model="shapes-tiny", percentile=75, progress=False, num_workers=0
    )
    assert result["method"] == "itm" and result["run"].done == 12
    label = view.first().gt_label
    assert 0 <= label["gt_label_match_itm"] <= 1 and -1 <= label["gt_label_match_margin"] <= 1
    assert label["gt_label_match_mistakenness"] is not None
    assert view.count("gt_label_match_margin") == 11 and result["scored_samples"] == 11
    assert fresh_dataset[unlabeled.id].gt_label is None  # nothing written where no label is
    run = fiftyone_blip.runs(fresh_dataset)[-1]
    assert run["capability"] == "match" and run["settings"]["template"] == "a {label}"
    assert run["settings"]["classes"] == sorted(fresh_dataset.distinct("gt_label.label"))


def test_detections_are_scored_per_object_and_flagged_per_label(fresh_dataset):
    view = fresh_dataset.limit(6)
    result = fiftyone_blip.find_mislabels(
        view, "gt_objects", model="shapes-tiny", level="label", top_k=2, progress=False, num_workers=0
    )
    objects = view.values("gt_objects.detections")
    assert all(d["gt_objects_match_itm"] is not None for dets in objects for d in dets)
    assert result["flagged_labels"] == 2
    flagged = [d for dets in objects for d in dets if d["gt_objects_match_flagged"]]
    assert len(flagged) == 2 and all("mislabel" in d.tags for d in flagged)
    assert view.count_label_tags("gt_objects") == {"mislabel": 2}


def test_multi_label_classifications_are_scored_and_flagged_per_label(fresh_dataset, fo):
    view = fresh_dataset.limit(6)
    for sample in view:
        kinds = sorted({d.label for d in sample.gt_objects.detections})
        sample["kinds"] = fo.Classifications(classifications=[fo.Classification(label=k) for k in kinds])
        sample.save()
    result = fiftyone_blip.find_mislabels(
        view, "kinds", model="shapes-tiny", level="label", top_k=3, progress=False, num_workers=0
    )
    assert result["flagged_labels"] == 3
    labels = [c for cs in view.values("kinds.classifications") for c in cs]
    assert all(-1 <= c["kinds_match_margin"] <= 1 for c in labels)
    assert sum(bool(c["kinds_match_flagged"]) for c in labels) == 3


def test_caption_self_check_on_generated_captions(fresh_dataset):
    view = fresh_dataset.limit(8)
    fiftyone_blip.caption(view, model="shapes-tiny", progress=False, num_workers=0)
    result = fiftyone_blip.find_mislabels(view, "caption", model="shapes-tiny", threshold=0.5, progress=False)
    assert result["scored_samples"] == 8
    assert view.count("caption_match") == 8


def test_bad_input_is_refused_before_any_work(fresh_dataset, fo):
    fresh_dataset.add_sample_field("score", fo.FloatField)
    fresh_dataset.add_sample_field("empty", fo.EmbeddedDocumentField, embedded_doc_type=fo.Classification)
    with pytest.raises(ValueError, match="holds FloatField"):
        fiftyone_blip.find_mislabels(fresh_dataset, "score", model="shapes-tiny")
    with pytest.raises(ValueError, match="not a field"):
        fiftyone_blip.find_mislabels(fresh_dataset, "nope", model="shapes-tiny")
    with pytest.raises(ValueError, match="label set is empty"):
        fiftyone_blip.find_mislabels(fresh_dataset, "empty", model="shapes-tiny")
    with pytest.raises(ValueError, match=r"must contain \{label\}"):
        fiftyone_blip.find_mislabels(fresh_dataset, "gt_label", model="shapes-tiny", template="a shape")
    with pytest.raises(ValueError, match="exactly one"):
        fiftyone_blip.find_mislabels(fresh_dataset, "gt_label", model="shapes-tiny", threshold=0.5, top_k=3)
    assert not any(name.endswith("_match") for name in fresh_dataset.get_field_schema())
    assert fiftyone_blip.runs(fresh_dataset) == []


# --- the CLI and the App operator ----------------------------------------------------------------------------


def test_cli_scores_then_reflags_without_a_model(fresh_dataset):
    from fiftyone_blip.cli import main

    swap_captions(fresh_dataset, 4, seed=1)
    runner = CliRunner()
    result = runner.invoke(
        main,
        ["mislabels", fresh_dataset.name, "--label-field", "gt_caption", "-m", "shapes-tiny", "--top-k", "4", "-q"],
    )
    assert result.exit_code == 0, result.output
    assert "48 done" in result.output and "flagged 4 of 48" in result.output
    result = runner.invoke(
        main, ["mislabels", fresh_dataset.name, "--label-field", "gt_caption", "--flag-only", "--threshold", "0.99"]
    )
    assert result.exit_code == 0, result.output
    result = runner.invoke(
        main, ["mislabels", fresh_dataset.name, "--label-field", "gt_label", "-m", "shapes-tiny", "--template", "oops"]
    )
    assert result.exit_code == 1 and result.output.startswith("Error: `template` must contain {label}")


def test_operator_offers_only_compatible_fields(fresh_dataset, plugin_installed, fo):
    import fiftyone.operators as foo
    from fiftyone.operators.executor import ExecutionContext

    fresh_dataset.add_sample_field("score", fo.FloatField)
    operator = foo.get_operator(URI)
    ctx = ExecutionContext(request_params=dict(dataset_name=fresh_dataset.name, params={}))
    form = operator.resolve_input(ctx)
    choices = [c.value for c in form.type.properties["label_field"].view.choices]
    assert {"gt_label", "gt_objects", "gt_caption"} <= set(choices)
    assert "score" not in choices and "split" in choices  # a string field: free text
    ctx = ExecutionContext(
        request_params=dict(dataset_name=fresh_dataset.name, params=dict(label_field="gt_label", template="no label"))
    )
    form = operator.resolve_input(ctx)
    invalid = [p for p in form.type.properties.values() if getattr(p, "invalid", False)]
    assert invalid and "{label}" in invalid[0].error_message


def run_operator(dataset, **params):
    """Runs find_mislabels on the whole dataset through FiftyOne's operator executor."""
    import fiftyone.operators as foo

    foo.execute_operator(
        URI, ctx=dict(dataset=dataset, params=dict(view_target="DATASET", **params))
    ).raise_exceptions()


def test_operator_flags_injected_errors_end_to_end(fresh_dataset, plugin_installed):
    wrong = swap_captions(fresh_dataset, 6, seed=2)
    run_operator(fresh_dataset, label_field="gt_caption", model="shapes-tiny", flag_by="top_k", top_k=6, tag="suspect")
    tagged = set(fresh_dataset.match_tags("suspect").values("id"))
    flagged = set(fresh_dataset.match({"gt_caption_match_flagged": True}).values("id"))
    assert tagged == flagged and len(tagged) == 6
    assert len(tagged & wrong) >= 5  # chance: 0.75 of 6
    assert "gt-caption-match-review" in fresh_dataset.list_saved_views()


def test_operator_flags_injected_class_labels_end_to_end(fresh_dataset, plugin_installed):
    wrong = swap_class_labels(fresh_dataset, 5, seed=3)
    run_operator(fresh_dataset, label_field="gt_label", model="shapes-tiny", flag_by="top_k", top_k=5)
    flagged = set(fresh_dataset.match_tags("mislabel").values("id"))
    assert len(flagged) == 5 and len(flagged & wrong) >= 4  # chance: about 0.5
    review = fresh_dataset.load_saved_view("gt-label-match-review")
    assert set(review.values("id")) == flagged


def test_injected_object_labels_are_flagged_on_their_crops(fresh_dataset):
    wrong = swap_object_labels(fresh_dataset, 4, seed=4)
    result = fiftyone_blip.find_mislabels(
        fresh_dataset, "gt_objects", model="shapes-tiny", level="label", top_k=4, progress=False, num_workers=0
    )
    assert result["flagged_labels"] == 4
    objects = [d for dets in fresh_dataset.values("gt_objects.detections") for d in dets]
    flagged = {d.id for d in objects if d["gt_objects_match_flagged"]}
    assert len(flagged & wrong) >= 3  # chance: about 0.2 of 4 among ~100 objects


def test_operator_opens_the_review_view_by_its_stages(fresh_dataset, plugin_installed):
    """The App looks a view name up among the saved views it loaded with the page, which
    lack the one the run saves: the operator must send the view itself."""
    import fiftyone.operators as foo
    from fiftyone.operators.executor import ExecutionContext, Executor

    swap_captions(fresh_dataset, 3, seed=4)
    operator = foo.get_operator(URI)
    ctx = ExecutionContext(
        request_params=dict(
            dataset_name=fresh_dataset.name,
            params=dict(label_field="gt_caption", model="shapes-tiny", flag_by="top_k", top_k=3),
        ),
        executor=Executor(),
    )
    triggers = [message.body for message in operator.execute(ctx) if getattr(message, "body", None) is not None]
    set_view = [request.params for request in triggers if request.operator_uri == "set_view"]
    assert len(set_view) == 1 and "name" not in set_view[0]
    review = fresh_dataset.load_saved_view("gt-caption-match-review")
    from fiftyone.core.view import DatasetView

    sent = DatasetView._build(fresh_dataset, set_view[0]["view"])
    assert len(review) == 3 and sent.values("id") == review.values("id")
