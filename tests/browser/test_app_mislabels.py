"""Label QA in the App: swapped captions, found from the operator form, tagged on the grid, in a review view."""

import re

from label_noise import swap_captions

import fiftyone_blip

NAME = "find_mislabels"
LABEL = "BLIP: find mislabels"
WRONG = 4


def test_find_swapped_captions_from_the_operator_form(app, app_dataset, fo):
    dataset = app_dataset("app-mislabels", count=24)
    wrong = swap_captions(dataset, WRONG, seed=3)
    # a number field: not a label, so the form must not offer it
    dataset.set_values("brightness", [0.5] * len(dataset))
    # What the same run flags, on a copy the App never opens.
    reference = dataset.clone("app-mislabels-reference")
    try:
        fiftyone_blip.find_mislabels(reference, "gt_caption", model="shapes-tiny", top_k=WRONG, progress=False)
        expected = set(reference.match_tags("mislabel").values("id"))
    finally:
        reference.delete()
    assert len(expected & wrong) >= WRONG - 1

    app.open("app-mislabels")
    app.expect(app.cy("looker")).to_have_count(24)

    form = app.open_operator(NAME, LABEL)
    app.expect(app.execute_button()).to_be_enabled()
    assert app.form_input(form, "Model").input_value() == "shapes-tiny"

    # The label field dropdown offers the dataset's label and text fields, not the number field.
    form.get_by_text("Label field", exact=True).locator("xpath=following::*[@role='combobox'][1]").click()
    options = app.page.get_by_role("listbox").get_by_role("option")
    app.expect(options.filter(has_text=re.compile("^gt_caption$"))).to_have_count(1)
    offered = [option.inner_text().strip() for option in options.all()]
    assert "brightness" not in offered and "filepath" not in offered
    assert {"gt_caption", "gt_label", "gt_objects"} <= set(offered)
    app.screenshot("mislabels-fields")
    options.filter(has_text=re.compile("^gt_caption$")).click()
    app.expect(app.page.get_by_role("listbox")).to_have_count(0)
    app.expect(app.form_input(form, "Score field")).to_have_value("gt_caption_match")

    # Flag the top k.
    form.get_by_text("Flag by", exact=True).locator("xpath=following::*[@role='combobox'][1]").click()
    app.page.get_by_role("listbox").get_by_role("option", name="Top-k", exact=True).click()
    app.fill(form, {"Flag the k most suspicious": WRONG})
    app.expect(form.get_by_text("Invalid settings")).to_have_count(0)
    app.execute(
        re.compile(
            rf"BLIP label QA: flagged {WRONG} of 24 samples \(tag 'mislabel'\); review view 'gt-caption-match-review'"
        )
    )

    # The review view is loaded: the flagged samples only, each tile with the tag.
    app.expect(app.cy("looker")).to_have_count(WRONG)
    stages = app.cy("view-bar").locator("input")
    app.expect(stages.first).to_have_value("Match")
    assert [stage.input_value() for stage in stages.all()][:1] == ["Match"]
    assert "SortBy" in [stage.input_value() for stage in stages.all()]
    app.show_field("tags")
    app.show_field("gt_caption")
    # (sample tags show on the tiles as `tag-tags-<tag>`)
    app.expect(app.cy("tag-tags-mislabel")).to_have_count(WRONG)
    captions = app.grid_tags("gt_caption")
    app.expect(captions).to_have_count(WRONG)
    shown = sorted(tag.get_attribute("title").removeprefix("gt_caption: ") for tag in captions.all())
    assert shown == sorted(dataset.select(list(expected)).values("gt_caption"))
    app.close_notifications()
    app.screenshot("mislabels-review")

    dataset.reload()
    assert set(dataset.match_tags("mislabel").values("id")) == expected


def replace_class_labels(dataset, count, seed):
    """Replaces `count` samples' `gt_label` with another kind drawn at random (as eval_flag_rule.py); their ids."""
    import random

    from fiftyone_blip.shapes.data import KINDS

    rng = random.Random(seed)
    chosen = rng.sample(list(dataset), count)
    for sample in chosen:
        sample.gt_label.label = rng.choice([k for k in KINDS if k != sample.gt_label.label])
        sample.save()
    return {sample.id for sample in chosen}


def test_label_qa_defaults_flag_in_the_app_what_the_sdk_flags(app, fo):
    """The form's defaults on 200 held-out shapes: few flags when clean, about the injected count at 10% noise."""
    base = fiftyone_blip.load_shapes_dataset("tests-shapes-200", count=200, split="test")
    names = {"clean": "app-qa-clean", "noisy": "app-qa-noisy"}
    try:
        datasets = {kind: base.clone(name, persistent=True) for kind, name in names.items()}
        wrong = replace_class_labels(datasets["noisy"], 20, seed=11)
        # what the SDK's defaults flag, on copies the App never opens
        expected = {}
        for kind, dataset in datasets.items():
            reference = dataset.clone(f"{dataset.name}-sdk")
            try:
                fiftyone_blip.find_mislabels(reference, "gt_label", model="shapes-tiny", progress=False)
                expected[kind] = set(reference.match_tags("mislabel").values("id"))
            finally:
                reference.delete()

        for kind, dataset in datasets.items():  # one App session for both
            app.open(dataset.name)
            form = app.open_operator(NAME, LABEL)
            app.expect(app.execute_button()).to_be_enabled()
            assert app.form_input(form, "Model").input_value() == "shapes-tiny"
            app.expect(app.form_input(form, "Score field")).to_have_value("gt_label_match")  # the label field
            count = len(expected[kind])
            app.execute(re.compile(rf"BLIP label QA: flagged {count} of 200 samples \(tag 'mislabel'\)"))
            app.expect(app.cy("looker")).to_have_count(count)  # the review view
            app.close_notifications()
            dataset.reload()
            assert set(dataset.match_tags("mislabel").values("id")) == expected[kind]

        clean, noisy = expected["clean"], expected["noisy"]
        hits = len(noisy & wrong)
        print(
            f"label QA defaults in the App, 200 held-out shapes: clean {len(clean)} flagged; "
            f"10% noise: {len(noisy)} flagged for {len(wrong)} injected, precision {hits / max(len(noisy), 1):.2f}, "
            f"recall {hits / len(wrong):.2f}"
        )
        assert len(clean) <= 10  # at most 5% of a clean set
        assert 14 <= len(noisy) <= 28 and hits >= 14
    finally:
        for name in names.values():
            if fo.dataset_exists(name):
                fo.delete_dataset(name)


FIX_NAME = "fix_mislabels"
FIX_LABEL = "BLIP: fix flagged labels"


def test_a_suggested_label_applied_and_undone(app, app_dataset, fo):
    """The review view of swapped class labels: the suggested classes applied from the App, then undone."""
    from label_noise import swap_class_labels

    dataset = app_dataset("app-fix-labels", count=24)
    swap_class_labels(dataset, 3, seed=3)
    fiftyone_blip.find_mislabels(dataset, "gt_label", model="shapes-tiny", progress=False, num_workers=0)
    before = {i: label.to_dict() for i, label in zip(*dataset.values(["id", "gt_label"]))}
    review = dataset.load_saved_view("gt-label-match-review")
    current, suggested = review.values(["gt_label.label", "gt_label.gt_label_match_suggested"])
    expected = sum(c != s for c, s in zip(current, suggested))
    assert expected >= 2

    app.open("app-fix-labels", view="gt-label-match-review")
    app.expect(app.cy("looker")).to_have_count(len(review))
    # the suggestion beside the label on each tile of the review view
    app.show_field("gt_label_match_suggested")
    shown = app.grid_tags("gt_label_match_suggested")
    app.expect(shown).to_have_count(len(review))
    titles = sorted(tag.get_attribute("title").removeprefix("gt_label_match_suggested: ") for tag in shown.all())
    assert titles == sorted(suggested)

    form = app.open_operator(FIX_NAME, FIX_LABEL)
    app.expect(app.execute_button()).to_be_enabled()
    app.execute(re.compile(rf"applied the suggested class to {expected} labels of 'gt_label'"))
    app.close_notifications()
    dataset.reload()
    after = dict(zip(*dataset.values(["id", "gt_label.label"])))
    assert sorted(after[i] for i in review.values("id")) == sorted(suggested)
    app.screenshot("mislabels-applied")

    form = app.open_operator(FIX_NAME, FIX_LABEL)
    form.get_by_text("Action", exact=True).locator("xpath=following::*[@role='combobox'][1]").click()
    app.page.get_by_role("listbox").get_by_role("option", name=re.compile("^Undo")).click()
    app.execute(re.compile(rf"restored {expected} labels of 'gt_label'"))
    dataset.reload()
    assert {i: label.to_dict() for i, label in zip(*dataset.values(["id", "gt_label"]))} == before
