"""A run into a field that holds another run's values is flagged in the form, before Execute, with the
settings that differ; Execute stays disabled until "Recompute" is ticked or another field is chosen."""

import re

CAPTION = ("caption_samples", "BLIP: caption samples")
LABEL_QA = ("find_mislabels", "BLIP: find mislabels")
RECOMPUTE = "Recompute samples already done"


def checkbox(form, label):
    """The checkbox of the form's input shown as `label`."""
    return form.get_by_text(label, exact=True).locator("xpath=preceding::input[@type='checkbox'][1]")


def tick(form, label):
    checkbox(form, label).check()


def test_a_conflict_is_shown_in_the_form_before_execute(app, app_dataset):
    import fiftyone_blip

    dataset = app_dataset("app-conflicts", count=6)
    fiftyone_blip.caption(dataset, model="shapes-tiny", progress=False)
    fiftyone_blip.find_mislabels(dataset, "gt_label", model="shapes-tiny", margin=False, progress=False)
    app.open("app-conflicts")

    form = app.open_operator(*CAPTION)
    execute = app.execute_button()
    app.expect(execute).to_be_enabled()  # the same settings: those samples are resumed
    app.fill(form, {"Max new tokens": 20})
    conflict = form.get_by_text(
        re.compile(
            r"already holds values on 6 samples .*they came from 'shapes-tiny' with max_new_tokens=30; "
            r"this run: max_new_tokens=20"
        )
    )
    conflict.scroll_into_view_if_needed()
    app.expect(conflict).to_be_visible()
    app.expect(execute).to_be_disabled()
    app.screenshot("form-conflict-caption")
    tick(form, RECOMPUTE)
    app.expect(conflict).to_have_count(0)
    app.expect(execute).to_be_enabled()
    app.execute(re.compile(r"BLIP captions: 6 done, 0 failed"))
    dataset.reload()
    assert dataset.count("caption") == 6

    form = app.open_operator(*LABEL_QA)
    conflict = form.get_by_text(re.compile(r"'gt_label_match' already holds values on 6 samples.*margin=False"))
    conflict.scroll_into_view_if_needed()
    app.expect(conflict).to_be_visible()
    app.expect(app.execute_button()).to_be_disabled()
    app.screenshot("form-conflict-label-qa")
    # the checkbox's words tick it too, as a user clicks them
    form.get_by_text(RECOMPUTE, exact=True).click()
    app.expect(checkbox(form, RECOMPUTE)).to_be_checked()
    app.expect(conflict).to_have_count(0)
    app.expect(app.execute_button()).to_be_enabled()
