"""Captions in another language from the App: the field follows the language, and English captions are kept."""

import re

import fiftyone_blip

NAME = "caption_samples"
LABEL = "BLIP: caption samples"


def choose_language(app, form, language):
    form.get_by_text("Language", exact=True).locator("xpath=following::*[@role='combobox'][1]").click()
    app.page.get_by_role("listbox").get_by_role("option", name=f"{language} (adapter)", exact=True).click()
    app.expect(app.page.get_by_role("listbox")).to_have_count(0)


def test_a_language_run_is_refused_into_english_captions_then_written_beside_them(app, app_dataset):
    dataset = app_dataset("app-language", count=6)
    fiftyone_blip.caption(dataset, model="shapes-tiny", progress=False, num_workers=0)
    english = dataset.values("caption")

    app.open("app-language")
    form = app.open_operator(NAME, LABEL)
    app.expect(app.form_input(form, "Caption field")).to_have_value("caption")
    choose_language(app, form, "de")
    # the suggested field follows the language
    app.expect(app.form_input(form, "Caption field")).to_have_value("caption_de")

    # German into the field of English captions: flagged in the form, before Execute, which stays disabled
    app.fill(form, {"Caption field": "caption"})
    refused = form.get_by_text(re.compile(r"^field 'caption' already holds values on 6 samples .*language"))
    refused.scroll_into_view_if_needed()
    app.expect(refused).to_be_visible()
    app.expect(app.execute_button()).to_be_disabled()
    app.screenshot("language-refused")
    app.page.keyboard.press("Escape")
    app.expect(app.page.get_by_role("dialog")).to_have_count(0)
    dataset.reload()
    assert dataset.values("caption") == english

    # left at its suggestion, the field is caption_de: German captions beside the English ones
    form = app.open_operator(NAME, LABEL)
    choose_language(app, form, "de")
    app.expect(app.form_input(form, "Caption field")).to_have_value("caption_de")
    app.execute(re.compile(r"BLIP captions: 6 done, 0 failed"))
    dataset.reload()
    assert dataset.count("caption_de") == 6
    assert dataset.values("caption") == english
    app.sidebar_field("caption_de").wait_for()
    app.screenshot("language-done")
