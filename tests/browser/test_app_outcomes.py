"""Outcomes in sight: after a run the App shows its new fields and sidebar groups without a reload,
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
    app.screenshot("failed-samples-offer")

    # the new fields are in the sidebar, with no reload of the page (the App keeps the sidebar groups
    # of an open dataset: the run's own groups show when the dataset is opened again)
    for field in ("caption", "caption_confidence", "caption_error"):
        app.expect(app.sidebar_field(field)).to_be_visible()

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
