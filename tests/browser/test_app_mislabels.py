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
