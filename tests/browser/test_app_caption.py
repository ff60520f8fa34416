"""Captioning from the App: find the operator, check its form, run it on the current view, see the captions."""

import re

NAME = "caption_samples"
LABEL = "BLIP: caption samples"


def test_caption_the_current_view_from_the_operator_form(app, app_dataset):
    dataset = app_dataset("app-caption", count=24, views={"first-twelve": lambda ds: ds.limit(12)})
    in_view = dataset.load_saved_view("first-twelve").values("id")

    app.open("app-caption", view="first-twelve")
    app.expect(app.cy("looker")).to_have_count(12)
    assert app.sidebar_field("caption").count() == 0

    # The operator browser finds the operator by its name, and shows its label.
    app.operator_browser(NAME)
    choice = app.operator_choice(LABEL)
    choice.wait_for()
    assert app.page.get_by_text(NAME, exact=True).is_visible()
    app.screenshot("operator-browser")
    choice.click()

    # The form: the current view is the target, the bundled model is the default, and
    # once the server has checked the defaults, nothing is flagged and it can run.
    form = app.operator_form(LABEL)
    form.wait_for()
    execute = app.execute_button()
    app.expect(execute).to_be_enabled()
    app.expect(form.get_by_text("Required property")).to_have_count(0)
    assert form.get_by_role("radio", name=re.compile("Current view")).is_checked()
    assert app.form_input(form, "Model").input_value() == "shapes-tiny"
    assert app.form_input(form, "Caption field").input_value() == "caption"
    # Essentials first: the language right under the target, before the model; the settings
    # most runs never change sit in the collapsed "Advanced settings" section.
    language_y = form.get_by_text("Language", exact=True).bounding_box()["y"]
    assert language_y < form.get_by_text("Model", exact=True).bounding_box()["y"]
    app.expect(app.advanced_toggle(form)).to_have_attribute("aria-expanded", "false")
    for hidden in ("Batch size", "Precision", "Shard (I/N)", "Max new tokens"):
        assert app.collapsed(form.get_by_text(hidden, exact=True)), hidden
    app.screenshot("caption-form")
    app.expand_advanced(form)
    assert not app.collapsed(form.get_by_text("Batch size", exact=True))
    assert app.form_input(form, "Batch size").input_value() == "16"

    # An invalid setting is flagged in the form before anything runs, and cleared with it.
    app.fill(form, {"Shard (I/N)": "3/2"})
    invalid = form.get_by_text(
        "Shard (I/N) must be a part and a number of parts, parts counted from 0 (the last of 4 is 3/4), got 3/2"
    )
    invalid.wait_for()
    invalid.scroll_into_view_if_needed()
    app.expect(invalid).to_be_visible()
    app.expect(execute).to_be_disabled()
    app.screenshot("caption-form-invalid")
    app.fill(form, {"Shard (I/N)": ""})
    app.expect(invalid).to_have_count(0)

    # Run it now, on the current view: a notification, and the new fields in the sidebar.
    app.execute(re.compile(r"BLIP captions: 12 done, 0 failed"))
    app.sidebar_field("caption").wait_for()
    app.sidebar_field("caption_confidence").scroll_into_view_if_needed()
    app.screenshot("caption-done")
    app.close_notifications()

    # Exactly the samples of the view were captioned.
    dataset.reload()
    assert sorted(dataset.exists("caption").values("id")) == sorted(in_view)
    expected = dict(zip(*dataset.exists("caption").values(["id", "caption"])))

    # The grid shows the captions on the tiles once the field is ticked.
    app.show_field("caption")
    tags = app.grid_tags("caption")
    app.expect(tags).to_have_count(12)
    shown = {tag.get_attribute("title").removeprefix("caption: ") for tag in tags.all()}
    assert shown == set(expected.values())
    app.screenshot("caption-grid")

    # Run again: every sample of the view already holds a caption from the same model and settings.
    app.run_operator(NAME, LABEL, done=re.compile(r"BLIP captions: 0 done, 0 failed, 12 skipped"))
    app.close_notifications()

    # The sample modal shows the caption of the sample that was opened.
    app.open_sample(0)
    sample_id = app.modal_value("id").get_attribute("title")
    caption = app.modal_value("caption")
    caption.scroll_into_view_if_needed()
    assert caption.get_attribute("title") == expected[sample_id]
    assert caption.inner_text() == expected[sample_id]
    app.screenshot("caption-sample")

    # Opened again, the sidebar groups the run's fields: results under "BLIP captions", the
    # `_run` / `_error` bookkeeping in the collapsed "BLIP run records" group. (The App reads a
    # dataset's sidebar groups when it opens it.)
    app.page.keyboard.press("Escape")
    app.expect(app.cy("modal")).to_have_count(0)
    app.open("app-caption")
    app.expect(app.cy("sidebar-group-entry-BLIP CAPTIONS")).to_be_visible()
    app.expect(app.cy("sidebar-group-entry-BLIP RUN RECORDS")).to_be_visible()
    app.expect(app.sidebar_field("caption_confidence")).to_be_visible()
    # a collapsed group shows "+" (an expanded one "-") and moves its fields out of the sidebar
    records = app.cy("sidebar-group-entry-BLIP RUN RECORDS")
    app.expect(records.locator('[data-testid="AddIcon"]')).to_have_count(1)
    app.expect(app.cy("sidebar-group-entry-BLIP CAPTIONS").locator('[data-testid="AddIcon"]')).to_have_count(0)
    app.page.wait_for_function(
        "() => document.querySelector('[data-cy=sidebar-field-caption_run]').getBoundingClientRect().right <= 0"
    )
    app.screenshot("caption-sidebar-groups")
