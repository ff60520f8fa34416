"""Word heatmaps in the App: run the operator from its form, see the overlay, pick words in the modal panel."""

import re

NAME = "compute_heatmaps"
LABEL = "BLIP: word heatmaps"
PANEL = "word_heatmaps"
PANEL_LABEL = "BLIP word heatmaps"


def _without_and_with_overlay(app, modal):
    """(checkbox, image without the heatmap overlay, image with it) of the open sample modal: the overlay
    off and the image settled first, then on, waiting for the canvas to repaint with the map (the map
    is read after the click: a loaded machine draws it late)."""
    toggle = modal.locator('[data-cy="checkbox-heatmap"] input')
    toggle.wait_for(state="attached")
    if toggle.is_checked():
        app.cy("checkbox-heatmap").last.click()
        app.expect(toggle).not_to_be_checked()
    app.page.wait_for_function("() => document.querySelector('[data-cy=modal-looker-container] canvas') !== null")
    without = _image_region(app)
    for _ in range(60):  # settled: two captures 250 ms apart are the same
        app.page.wait_for_timeout(250)
        again = _image_region(app)
        if again == without:
            break
        without = again
    app.cy("checkbox-heatmap").last.click()
    app.expect(toggle).to_be_checked()
    with_overlay = _image_region(app)
    for _ in range(60):  # up to 15 s for the map to be drawn
        if with_overlay != without:
            break
        app.page.wait_for_timeout(250)
        with_overlay = _image_region(app)
    return toggle, without, with_overlay


def _image_region(app):
    """A screenshot (PNG bytes) of the sample modal's image."""
    return app.cy("modal-looker-container").screenshot(animations="disabled")


def overlay_change(before: bytes, after: bytes) -> tuple[float, float]:
    """(share of pixels whose colour changed by more than 40 of 255 in some channel, mean change) of two PNGs."""
    import io

    import numpy as np
    from PIL import Image

    a, b = (np.asarray(Image.open(io.BytesIO(png)).convert("RGB"), dtype=np.int16) for png in (before, after))
    assert a.shape == b.shape, (a.shape, b.shape)
    change = np.abs(a - b).max(axis=2)
    return float((change > 40).mean()), float(change.mean())


def test_heatmap_overlay_and_word_panel(app, app_dataset, fo):
    # The dataset's App settings are FiftyOne's defaults: the run itself makes the overlay readable.
    dataset = app_dataset("app-heatmaps", count=12)
    assert dataset.app_config.color_scheme is None

    app.open("app-heatmaps")
    app.expect(app.cy("looker")).to_have_count(12)
    assert app.sidebar_field("heatmap").count() == 0

    # The form, on the shapes captions: heads 0 and 1 standardised (the best setting for shapes-tiny).
    form = app.open_operator(NAME, LABEL)
    app.expect(app.execute_button()).to_be_enabled()
    assert app.form_input(form, "Model").input_value() == "shapes-tiny"
    assert app.form_input(form, "Heatmap field").input_value() == "heatmap"
    app.fill(form, {"Text field": "gt_caption", "Heads": "0,1"})
    form.get_by_role("checkbox", name="Standardise each head's map before averaging").check()
    app.expect(form.get_by_text("Invalid settings")).to_have_count(0)
    app.execute(re.compile(r"BLIP heatmaps: 12 done, 0 failed"))
    app.close_notifications()

    dataset.reload()
    assert dataset.count("heatmap") == 12
    app.sidebar_field("heatmap").wait_for()
    # The run gave the dataset a colorscale for the map (and sidebar groups); the App reads a
    # dataset's App settings when it opens it, as after a page reload.
    app.open("app-heatmaps")
    app.expect(app.cy("sidebar-group-entry-BLIP HEATMAPS")).to_be_visible()

    # The sample modal overlays the heatmap on the image: the image differs with the field off.
    modal = app.open_sample(0)
    sample_id = app.modal_value("id").get_attribute("title")
    sample = dataset[sample_id]
    words, text = sample["heatmap_words"], sample["heatmap_text"]
    assert text == sample["gt_caption"] and len(words) >= 2
    _, without_overlay, with_overlay = _without_and_with_overlay(app, modal)
    assert without_overlay != with_overlay
    app.screenshot("heatmap-modal")
    # readable, not a faint tint: drawn through a colorscale, most of the image changes colour clearly
    changed, mean = overlay_change(without_overlay, with_overlay)
    print(f"heatmap overlay: {changed:.1%} of the image's pixels changed by > 40/255, mean change {mean:.1f}")
    assert changed > 0.3 and mean > 30, (changed, mean)

    # The panel: the sample's caption, its words, and a map and probability per word.
    # (The modal lists the plugin's panel as a tab next to the sample.)
    tab = app.cy(f"panel-tab-{PANEL}")
    app.expect(tab).to_contain_text(PANEL_LABEL)
    tab.click()
    panel = app.page.locator(f"#{PANEL}")  # the panel's content
    panel_image = panel.get_by_alt_text("the word's map over the image")
    panel_image.wait_for()
    app.expect(panel.get_by_text(text, exact=True)).to_be_visible()
    score = panel.get_by_text(re.compile(r"probability \d\.\d{3} under the captioner"))
    # it opens on the caption's first content word ("red" in "a red circle ..."), not on "a"
    first = next(i for i, word in enumerate(words) if word not in ("a", "an", "the"))
    assert first > 0
    app.expect(score).to_contain_text(f"{words[first]}: probability {sample['heatmap_probs'][first]:.3f}")
    first_src = panel_image.get_attribute("src")
    assert first_src.startswith("data:image/")

    # Pick another word: its map and probability replace the first one's.
    panel.get_by_role("combobox").filter(has_text=f"{first + 1}. {words[first]}").click()
    listbox = app.page.get_by_role("listbox")
    app.expect(listbox.get_by_role("option")).to_have_count(len(words))
    listbox.get_by_role("option", name=f"1. {words[0]}", exact=True).click()
    app.expect(score).to_contain_text(f"{words[0]}: probability {sample['heatmap_probs'][0]:.3f}")
    app.expect(panel_image).not_to_have_attribute("src", first_src)
    # the map fills the panel's width, a colour legend under it, and the panel says what the sidebar shows
    legend = panel.get_by_alt_text("colour scale: blue for the least, red for the most")
    app.expect(legend).to_be_in_viewport()
    app.expect(panel.get_by_text(re.compile(r"does not follow the word picked here"))).to_be_visible()
    image_box, panel_box = panel_image.bounding_box(), panel.bounding_box()
    assert image_box["width"] >= 0.8 * panel_box["width"], (image_box, panel_box)
    app.screenshot("heatmap-panel")


def test_exported_heatmaps_render_after_the_maps_folder_is_gone(app, app_dataset, fo, tmp_path):
    """PNG maps (maps_dir) exported with the dataset: after the source folder is removed, the imported
    dataset's overlay and word panel show maps, read from the export."""
    import shutil

    import fiftyone_blip

    source = app_dataset("app-heatmaps-export-source", count=4)
    maps_dir = tmp_path / "maps"
    fiftyone_blip.heatmaps(source, model="shapes-tiny", text_field="gt_caption", maps_dir=str(maps_dir), progress=False)
    export_dir = tmp_path / "export"
    source.export(export_dir=str(export_dir), dataset_type=fo.types.FiftyOneDataset, export_media=True)
    shutil.rmtree(maps_dir)
    name = "app-heatmaps-imported"
    if fo.dataset_exists(name):
        fo.delete_dataset(name)
    imported = fo.Dataset.from_dir(dataset_dir=str(export_dir), dataset_type=fo.types.FiftyOneDataset, name=name)
    imported.persistent = True
    imported.app_config.color_scheme = fo.ColorScheme(
        color_by="value", colorscales=[{"path": "heatmap", "name": "jet"}]
    )
    imported.save()
    try:
        app.open(name)
        app.expect(app.cy("looker")).to_have_count(4)
        modal = app.open_sample(0)
        _, without_overlay, with_overlay = _without_and_with_overlay(app, modal)
        assert without_overlay != with_overlay  # the caption's map, read from the export, is drawn

        tab = app.cy(f"panel-tab-{PANEL}")
        tab.click()
        panel = app.page.locator(f"#{PANEL}")
        panel_image = panel.get_by_alt_text("the word's map over the image")
        panel_image.wait_for()
        assert panel_image.get_attribute("src").startswith("data:image/")
        app.expect(panel.get_by_text(re.compile(r"probability \d\.\d{3} under the captioner"))).to_be_visible()
        app.screenshot("heatmap-panel-imported")
    finally:
        if fo.dataset_exists(name):
            fo.delete_dataset(name)
