"""Hostile inputs to the capability modules: filtered views, shared folders, deleted samples,
odd templates and settings, broken files. Each test pins one defect found by hostile testing."""

import pytest

import fiftyone_blip

# --- mislabels on filtered label lists -----------------------------------------------------------------------


def _itm_by_label_id(collection, list_path, attribute):
    return {
        label.id: label[attribute] if attribute in label else None
        for labels in collection.values(list_path)
        for label in labels or []
    }


def _wanted_kind(dataset, list_path):
    """A label kind that most samples hold among others (so filtering drops some labels)."""
    counts = dataset.count_values(f"{list_path}.label")
    return max(counts, key=counts.get)


@pytest.mark.parametrize("kind", ["detections", "classifications"])
def test_mislabels_on_a_filter_labels_view_write_by_label_id(fresh_dataset, fo, kind):
    from fiftyone import ViewField as F

    dataset = fresh_dataset.limit(8).clone(fresh_dataset.name + "-8")
    try:
        if kind == "classifications":
            for sample in dataset:
                kinds = sorted({d.label for d in sample.gt_objects.detections})
                sample["gt_kinds"] = fo.Classifications(classifications=[fo.Classification(label=k) for k in kinds])
                sample.save()
            label_field, list_path = "gt_kinds", "gt_kinds.classifications"
        else:
            label_field, list_path = "gt_objects", "gt_objects.detections"
        # reference: every label scored in the unfiltered dataset (ITM of a label's own prompt
        # does not depend on which other labels are scored when margins are off)
        reference = dataset.clone(dataset.name + "-ref")
        try:
            fiftyone_blip.find_mislabels(
                reference, label_field, model="shapes-tiny", margin=False, progress=False, num_workers=0
            )
            expected = _itm_by_label_id(reference, list_path, f"{label_field}_match_itm")
        finally:
            reference.delete()
        wanted = _wanted_kind(dataset, list_path)
        view = dataset.filter_labels(label_field, F("label") == wanted)
        in_view = {label.id for labels in view.values(list_path) for label in labels or []}
        total = len(expected)
        assert 0 < len(in_view) < total  # the filter drops some labels

        result = fiftyone_blip.find_mislabels(
            view, label_field, model="shapes-tiny", margin=False, progress=False, num_workers=0
        )
        assert result["run"].done == len(view)
        stored = _itm_by_label_id(dataset, list_path, f"{label_field}_match_itm")
        assert len(stored) == total
        for label_id, score in stored.items():
            if label_id in in_view:
                assert score == pytest.approx(expected[label_id], abs=1e-5), label_id
            else:
                assert score is None, f"label {label_id} outside the view got a score"
        # flags too land on the view's labels only
        flagged = _itm_by_label_id(dataset, list_path, f"{label_field}_match_mistakenness")
        assert all((flagged[i] is not None) == (i in in_view) for i in stored)
    finally:
        dataset.delete()

