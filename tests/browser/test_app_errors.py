"""What the App shows when something is wrong: invalid inputs at their fields, and a run that fails after Execute."""

import re

CAPTION = ("caption_samples", "BLIP: caption samples")
HEATMAPS = ("compute_heatmaps", "BLIP: word heatmaps")
EMBED = ("compute_embeddings", "BLIP: compute embeddings and similarity index")


def flag(app, form, label, value, message):
    """Types `value` into the input `label` and waits for `message` under it."""
    app.fill(form, {label: value})
    shown = form.get_by_text(message, exact=True)
    shown.scroll_into_view_if_needed()
    app.expect(shown).to_be_visible()


def test_invalid_inputs_are_flagged_at_their_fields(app, app_dataset):
    app_dataset("app-errors-form", count=12)
    app.open("app-errors-form")

    form = app.open_operator(*CAPTION)
    execute = app.execute_button()
    app.expect(execute).to_be_enabled()
    flag(app, form, "Max new tokens", 500, "Max new tokens must be from 1 to 128, got 500")
    app.expect(execute).to_be_disabled()
    flag(app, form, "Batch size", 0, "Batch size must be from 1 to 1024, got 0")
    flag(
        app,
        form,
        "Shard (I/N)",
        "3/2",
        "Shard (I/N) must be a part and a number of parts, parts counted from 0 (the last of 4 is 3/4), got 3/2",
    )
    flag(
        app,
        form,
        "Caption field",
        "gt_label",
        "Caption field 'gt_label' holds Classification values, not text: choose a text field",
    )
    flag(
        app,
        form,
        "Model",
        "no-such-model",
        "Model must be shapes-tiny or a hub id like Salesforce/blip-image-captioning-base; got 'no-such-model'",
    )
    app.screenshot("form-errors-caption")
    # every earlier error is still shown: the form judges each input alone
    for message in ("Max new tokens must be from 1 to 128, got 500", "Batch size must be from 1 to 1024, got 0"):
        app.expect(form.get_by_text(message, exact=True)).to_have_count(1)
    app.expect(form.get_by_text("Invalid settings")).to_have_count(0)
    app.page.keyboard.press("Escape")
    app.expect(app.page.get_by_role("dialog")).to_have_count(0)

    form = app.open_operator(*HEATMAPS)
    flag(
        app,
        form,
        "Text field",
        "no_such_field",
        "Text field 'no_such_field' is not a field of dataset 'app-errors-form'",
    )
    flag(app, form, "Layers", "99", "Layers index 99 is out of range for a 2-layer text model")
    flag(app, form, "Map size (long side, pixels)", 4, "Map size (long side, pixels) must be from 8 to 1024, got 4")
    app.expect(app.execute_button()).to_be_disabled()
    app.screenshot("form-errors-heatmaps")
    app.page.keyboard.press("Escape")
    app.expect(app.page.get_by_role("dialog")).to_have_count(0)

    form = app.open_operator(*EMBED)
    flag(
        app,
        form,
        "Similarity index (brain key)",
        "my index",
        "Similarity index (brain key) must be letters, digits and underscores, not starting with a digit, "
        "got 'my index'",
    )
    app.expect(app.execute_button()).to_be_disabled()


def test_a_run_that_fails_after_execute_says_why(app, app_dataset):
    dataset = app_dataset("app-errors-run", count=6)
    app.open("app-errors-run")
    form = app.open_operator(*CAPTION)
    # a hub id passes the form (it has the right shape) but cannot be loaded offline
    app.fill(form, {"Model": "Salesforce/not-cached-here"})
    app.expect(app.execute_button()).to_be_enabled()
    message = app.execute(re.compile(r"^BLIP: caption samples failed: cannot load 'Salesforce/not-cached-here'"))
    app.expect(message).to_be_visible()
    assert "not in the local Hugging Face cache" in message.inner_text()
    app.screenshot("run-failed")
    dataset.reload()
    assert "caption" not in dataset.get_field_schema()
