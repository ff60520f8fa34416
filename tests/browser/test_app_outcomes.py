"""Outcomes in sight: after a run the App shows its new fields in their sidebar groups without a reload,
counts the failures in its notice and shows the failed samples with their reasons in one click;
the runs of a dataset are listed and one is deleted from the App."""

import re

NAME = "caption_samples"
LABEL = "BLIP: caption samples"


def test_new_fields_and_groups_show_and_failed_samples_are_one_click_away(app, app_dataset):
    dataset = app_dataset("app-outcomes", count=8)
    broken = dataset.limit(2)
    broken.set_values("filepath", [f"/nonexistent/missing-{n}.png" for n in range(2)])
    broken_ids = set(broken.values("id"))

    app.open("app-outcomes")
    assert app.sidebar_field("caption").count() == 0
    app.open_operator(NAME, LABEL)
    app.execute_button().click()

    # the notice counts the failures; the App offers their samples at once (one click)
    counted = re.compile(r"BLIP captions: 6 done, 2 failed.*2 samples failed \(2: file not found\)")
    app.page.locator("#notistack-snackbar").filter(has_text=counted).wait_for(timeout=240_000)
    show = app.page.get_by_role("button", name="Show the 2 failed samples")
    show.wait_for()
    app.expect(app.cy("looker")).to_have_count(8)
    app.page.wait_for_function("() => document.querySelectorAll('[data-cy=looker] canvas').length >= 8")
    app.screenshot("failed-samples-offer")

    # the new fields are in the sidebar, in the run's own groups, with no reload of the page: the
    # results under "BLIP captions", the bookkeeping in the collapsed "BLIP run records"
    captions, records = app.cy("sidebar-group-entry-BLIP CAPTIONS"), app.cy("sidebar-group-entry-BLIP RUN RECORDS")
    app.expect(captions).to_be_visible()
    app.expect(records).to_be_visible()
    for field in ("caption", "caption_confidence"):
        app.expect(app.sidebar_field(field)).to_be_visible()
        assert captions.bounding_box()["y"] < app.sidebar_field(field).bounding_box()["y"] < records.bounding_box()["y"]
    hidden = app.sidebar_field("caption_error").bounding_box()  # its group is collapsed: the App draws
    assert hidden is None or hidden["x"] + hidden["width"] < 0  # a collapsed group's fields off the sidebar

    show.click()
    app.expect(app.cy("looker")).to_have_count(2)
    tags = app.grid_tags("caption_error")
    app.expect(tags).to_have_count(2)
    assert all(tag.get_attribute("title") == "caption_error: file not found" for tag in tags.all())
    app.page.get_by_role("button", name="Done", exact=True).click()
    app.expect(app.page.get_by_role("dialog")).to_have_count(0)
    app.screenshot("failed-samples")
    dataset.reload()
    assert set(dataset.exists("caption_error").values("id")) == broken_ids


def test_a_run_is_listed_and_deleted_from_the_app(app, app_dataset):
    import fiftyone_blip

    dataset = app_dataset("app-runs", count=6)
    fiftyone_blip.caption(dataset, model="shapes-tiny", progress=False)
    app.open("app-runs")
    app.sidebar_field("caption").wait_for()
    app.expect(app.cy("sidebar-group-entry-BLIP CAPTIONS")).to_be_visible()

    form = app.open_operator("manage_runs", "BLIP: runs")
    # the run's record: status, counts and settings; nothing to execute until an action is chosen
    app.expect(form.get_by_text(re.compile(r"completed: 6 done, 0 failed, 0 skipped of 6"))).to_be_visible()
    app.expect(form.get_by_text(re.compile(r"strategy='greedy'"))).to_be_visible()
    execute = app.execute_button()
    app.expect(execute).to_be_disabled()

    # deleting: the warning lists what goes; Execute waits for the confirmation
    form.get_by_text("Delete it and what it wrote", exact=True).click()
    warning = form.get_by_text(re.compile(r"fields: caption, caption_confidence, caption_error, caption_run"))
    app.expect(warning).to_be_visible()
    app.expect(execute).to_be_disabled()
    app.screenshot("runs-delete-form")
    form.get_by_text("Yes, delete these", exact=True).click()
    app.execute(re.compile(r"deleted run 'blip_caption_caption' of dataset 'app-runs': 4 fields"))
    app.expect(app.sidebar_field("caption")).to_have_count(0)
    app.expect(app.cy("sidebar-group-entry-BLIP CAPTIONS")).to_have_count(0)  # its emptied group goes too
    dataset.reload()
    assert "caption" not in dataset.get_field_schema()
    assert "blip_caption_caption" not in dataset.list_runs()
