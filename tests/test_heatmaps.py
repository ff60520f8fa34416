"""Word heatmaps: settings, geometry, the SDK in both modes, the CLI, the operator and the panel."""

import numpy as np
import pytest
from PIL import Image


def test_settings_validate_themselves():
    from fiftyone_blip.word_heatmaps import HeatmapSettings, default_gradcam_layer

    with pytest.raises(ValueError, match="`mode`"):
        HeatmapSettings(mode="saliency")
    with pytest.raises(ValueError, match="`heads`"):
        HeatmapSettings(heads="some")
    with pytest.raises(ValueError, match="`map_size`"):
        HeatmapSettings(map_size=4)
    with pytest.raises(ValueError, match="`layers` index 5"):
        HeatmapSettings(layers=[5]).layer_indices(2)
    assert HeatmapSettings(heads="0, 2").head_indices(4) == [0, 2]
    assert HeatmapSettings(layers="last").layer_indices(12) == [11]
    assert HeatmapSettings().layer_indices(3) == [0, 1, 2]
    # BLIP's Grad-CAM uses layer 8 of 12; the last layer's word tokens have no gradient.
    assert default_gradcam_layer(12) == 8
    assert default_gradcam_layer(2) == 0
    assert HeatmapSettings(mode="gradcam").layer_indices(12) == [8]


def test_word_pieces_merge_into_words():
    from fiftyone_blip.word_heatmaps import merge_word_pieces

    tokens = ["a", "dog", "##gy", ",", "run", "##s"]
    assert merge_word_pieces(tokens, [1, 2, 3, 4, 5, 6]) == [("a", [1]), ("doggy", [2, 3]), ("runs", [5, 6])]


@pytest.mark.parametrize("mode", ["letterbox", "center-crop", "squash"])
def test_grid_maps_land_where_the_model_saw_them(mode):
    """A hot patch of the model's grid lands on the original pixels that patch saw."""
    from fiftyone_blip.images import fit_image
    from fiftyone_blip.word_heatmaps import grid_to_image, peak

    width, height, size, grid = 300, 120, 96, 6  # non-square: letterbox pads top and bottom
    _, geometry = fit_image(Image.new("RGB", (width, height)), size, mode)
    cell = size / grid
    for row, col in [(2, 1), (3, 4), (2, 5)]:
        grid_map = np.zeros((grid, grid))
        grid_map[row, col] = 1.0
        mapped = grid_to_image(grid_map, geometry, 150)
        assert mapped.shape == (60, 150)  # the image's aspect, long side 150
        x, y = peak(mapped, width, height)
        # where the patch centre lies in original pixels
        expected_x = ((col + 0.5) * cell - geometry.offset_x) / geometry.scale_x
        expected_y = ((row + 0.5) * cell - geometry.offset_y) / geometry.scale_y
        assert abs(x - expected_x) <= width / 150 + 1e-6
        assert abs(y - expected_y) <= height / 60 + 1e-6
    if mode == "letterbox":
        # padding rows (model rows 0 and 5 here) never reach the image
        grid_map = np.zeros((grid, grid))
        grid_map[0, :] = 1.0
        assert grid_to_image(grid_map, geometry, 150).max() < 0.5
    if mode == "center-crop":
        # the left and right of the image were cropped away: nothing there
        mapped = grid_to_image(np.ones((grid, grid)), geometry, 150)
        assert mapped[:, :10].max() == 0 and mapped[:, -10:].max() == 0 and mapped[:, 75].min() == 1


@pytest.fixture(scope="module")
def heatmapped(fo, tmp_path_factory):
    """Six captioned shapes images with cross-attention heatmaps (one run for several tests)."""
    import fiftyone_blip

    base = fiftyone_blip.load_shapes_dataset("tests-shapes", count=48, split="test")
    name = "t-heatmaps-module"
    if fo.dataset_exists(name):
        fo.delete_dataset(name)
    dataset = base.limit(6).clone(name)
    fiftyone_blip.caption(dataset, model="shapes-tiny", progress=False)
    summary = fiftyone_blip.heatmaps(dataset, model="shapes-tiny", progress=False)
    assert summary.done == 6 and summary.failed == 0
    yield dataset
    fo.delete_dataset(name)


def test_cross_attention_maps_per_word(heatmapped):
    import fiftyone as fo

    import fiftyone_blip

    sample = heatmapped.first()
    words = sample.caption.replace(",", " ").split()
    assert sample.heatmap_words == words
    assert sample.heatmap_text == sample.caption
    assert isinstance(sample.heatmap, fo.Heatmap) and sample.heatmap.map.shape == (64, 64)
    assert sample.heatmap_maps.shape == (len(words), 64, 64) and sample.heatmap_maps.dtype == np.uint8
    assert len(sample.heatmap_probs) == len(words) and all(0 < p <= 1 for p in sample.heatmap_probs)
    assert fiftyone_blip.runs(heatmapped)[-1]["capability"] == "heatmaps"
    again = fiftyone_blip.heatmaps(heatmapped, model="shapes-tiny", progress=False)
    assert again.skipped == 6 and again.done == 0  # same model and settings: resumed, not redone


def test_gradcam_for_a_query_with_png_maps(heatmapped, tmp_path):
    import fiftyone_blip

    view = heatmapped.limit(2)
    fiftyone_blip.heatmaps(
        view,
        mode="gradcam",
        model="shapes-tiny",
        field="gc",
        text="a red circle",
        maps_dir=str(tmp_path),
        map_size=32,
        progress=False,
    )
    sample = view.first()
    assert sample.gc_words == ["a", "red", "circle"] and sample.gc_text == "a red circle"
    assert 0 <= sample.gc_match <= 1
    for path in [h.map_path for h in sample.gc_word_maps]:
        assert str(tmp_path) in path
        assert np.asarray(Image.open(path)).shape == (32, 32)
    assert sample.gc.map_path.startswith(str(tmp_path))
    assert (
        max(np.asarray(Image.open(p)).max() for p in [h.map_path for h in sample.gc_word_maps]) == 255
    )  # not all-zero maps


def test_letterboxed_wide_image_end_to_end(fo, tmp_path):
    """A shapes scene in a wide canvas, letterboxed: maps keep the image's aspect and find its objects."""
    import fiftyone_blip
    from fiftyone_blip.shapes import make_scene
    from fiftyone_blip.word_heatmaps import peak

    dataset = fo.Dataset()
    hits = total = 0
    scenes = [make_scene(i, split="test") for i in range(12)]
    scenes = [s for s in scenes if len(s.objects) == 1][:3]
    for i, scene in enumerate(scenes):
        canvas = Image.new("RGB", (192, 96), scene.background)
        canvas.paste(scene.render(), (96, 0))  # the scene is the right half
        path = tmp_path / f"wide-{i}.png"
        canvas.save(path)
        dataset.add_sample(fo.Sample(filepath=str(path), caption=scene.caption()))
    fiftyone_blip.heatmaps(dataset, model="shapes-tiny", resize="letterbox", progress=False)
    for sample, scene in zip(dataset, scenes):
        assert sample.heatmap.map.shape == (32, 64)
        obj = scene.objects[0]
        words = sample.heatmap_words
        x, y = peak(sample.heatmap_maps[words.index(obj.kind)], 192, 96)
        x0, y0, x1, y1 = obj.box
        total += 1
        hits += 96 + x0 - 4 <= x <= 96 + x1 + 4 and y0 - 4 <= y <= y1 + 4
    assert hits >= total - 1
    dataset.delete()


def test_cli_heatmaps_and_overlays(heatmapped, tmp_path):
    from click.testing import CliRunner

    from fiftyone_blip.cli import main

    runner = CliRunner()
    result = runner.invoke(
        main, ["heatmaps", heatmapped.name, "-m", "shapes-tiny", "-f", "hm_cli", "--layers", "last", "-q"]
    )
    assert result.exit_code == 0, result.output
    assert "6 done" in result.output
    result = runner.invoke(main, ["heatmap-overlays", heatmapped.name, str(tmp_path), "-f", "hm_cli"])
    assert result.exit_code == 0, result.output
    sample = heatmapped.exists("hm_cli_words").first()
    files = sorted(p.name for p in tmp_path.iterdir())
    assert "caption.png" in files and len(files) == len(sample.hm_cli_words) + 1
    assert Image.open(tmp_path / "caption.png").size == (96, 96)
    bad = runner.invoke(main, ["heatmaps", heatmapped.name, "-m", "shapes-tiny", "--heads", "9"])
    assert bad.exit_code != 0 and "`heads` index 9" in bad.output


class _State(dict):
    __getattr__ = dict.get

    def __setattr__(self, key, value):
        self[key] = value


class _Ctx:
    """What the panel reads of an ExecutionContext: dataset, current sample, params, panel state and data."""

    def __init__(self, dataset, sample_id, params=None):
        self.dataset = dataset
        self.current_sample = sample_id
        self.params = params or {}
        self.panel = type("PanelRef", (), {})()
        self.panel.state = _State()
        self.panel.data = _State()


def test_panel_shows_the_chosen_words_map_and_probability(heatmapped, plugin_installed):
    import fiftyone.operators as foo

    from fiftyone_blip.images import load_image
    from fiftyone_blip.word_heatmaps import overlay, word_maps

    operators = importlib_plugin()
    registry = foo.OperatorRegistry()
    assert registry.operator_exists("@fiftyone-blip/blip/compute_heatmaps")
    assert registry.operator_exists("@fiftyone-blip/blip/word_heatmaps")

    panel = operators.WordHeatmapsPanel()
    sample = heatmapped.first()
    ctx = _Ctx(heatmapped, sample.id)
    panel.on_load(ctx)
    assert ctx.panel.state.message is None
    assert ctx.panel.state.words == sample.heatmap_words
    assert ctx.panel.state.word == "1"  # the first content word: the caption starts with "a"
    import base64
    import io

    rendered = panel.render(ctx)
    assert "word" in rendered.type.properties and "overlay" in rendered.type.properties
    # a colour legend under the map (the overlay's colour scale, lowest to highest), and what the
    # sidebar's overlay shows
    assert {"legend", "legend_note"} <= set(rendered.type.properties)
    legend = Image.open(io.BytesIO(base64.b64decode(ctx.panel.data.legend.split(",", 1)[1]))).convert("RGB")
    low, high = legend.getpixel((0, legend.height // 2)), legend.getpixel((legend.width - 1, legend.height // 2))
    ramp = np.asarray(overlay(Image.new("RGB", (2, 1)), np.array([[0, 255]]), alpha=1.0), dtype=int)
    assert np.abs(np.array([low, high]) - ramp[0]).max() <= 2  # jet: blue for 0, red for 255
    note = rendered.type.properties["legend_note"].default
    assert "Blue: where BLIP looked least" in note and "does not follow the word picked here" in note

    word_index = 2
    ctx.params = {"value": str(word_index)}
    panel.on_change_word(ctx)
    words, maps, probs = word_maps(sample, "heatmap")
    assert ctx.panel.state.word == "2"
    assert f"{probs[word_index]:.3f}" in ctx.panel.state.score and words[word_index] in ctx.panel.state.score
    # the overlay is the stored map of that word over the image, scaled up for the panel
    shown = Image.open(io.BytesIO(base64.b64decode(ctx.panel.data.overlay.split(",", 1)[1])))
    image = load_image(sample.filepath).resize(shown.size, Image.Resampling.BICUBIC)
    expected = np.asarray(overlay(image, maps[word_index]), dtype=int)
    assert np.abs(np.asarray(shown, dtype=int) - expected).max() <= 1

    empty = _Ctx(heatmapped.limit(0)._dataset, None)
    panel.on_load(empty)
    assert "Open a sample" in empty.panel.state.message


def importlib_plugin():
    """The plugin's operators module, imported from the installed plugin folder."""
    import importlib.util

    from fiftyone_blip.plugin import plugin_dir

    spec = importlib.util.spec_from_file_location("fiftyone_blip_plugin_operators", plugin_dir() / "__init__.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_operator_runs_immediately(heatmapped, plugin_installed):
    import fiftyone.operators as foo

    view = heatmapped.limit(3)
    result = foo.execute_operator(
        "@fiftyone-blip/blip/compute_heatmaps",
        ctx=dict(
            view=view,
            params=dict(
                model="shapes-tiny",
                field="hm_op",
                mode="gradcam",
                text_source="field",
                text_field="caption",
                view_target="CURRENT_VIEW",
            ),
        ),
    )
    result.raise_exceptions()
    assert len(heatmapped.exists("hm_op_words")) == 3


def test_png_maps_travel_with_a_fiftyone_export(fo, heatmapped, plugin_installed, tmp_path):
    """Export with media, delete the maps folder, import: every word's map loads and the panel shows it."""
    import shutil

    import fiftyone_blip
    from fiftyone_blip.word_heatmaps import word_maps, word_view

    source = heatmapped.limit(3).clone("t-heatmaps-export-source")
    name = "t-heatmaps-export-imported"
    try:
        maps_dir = tmp_path / "maps"
        fiftyone_blip.heatmaps(source, model="shapes-tiny", field="hx", maps_dir=str(maps_dir), progress=False)
        before = {s.filepath: word_maps(s, "hx") for s in source}
        assert all(len(words) == len(maps) > 1 for words, maps, _ in before.values())

        export_dir = tmp_path / "export"
        source.export(export_dir=str(export_dir), dataset_type=fo.types.FiftyOneDataset, export_media=True)
        shutil.rmtree(maps_dir)
        if fo.dataset_exists(name):
            fo.delete_dataset(name)
        imported = fo.Dataset.from_dir(dataset_dir=str(export_dir), dataset_type=fo.types.FiftyOneDataset, name=name)
        assert len(imported) == 3
        for sample, (words, maps, probs) in zip(imported.sort_by("filepath"), [before[k] for k in sorted(before)]):
            got_words, got_maps, got_probs = word_maps(sample, "hx")
            assert got_words == words and np.array_equal(got_maps, maps) and got_probs == probs
            paths = [h.map_path for h in sample.hx_word_maps]
            assert len(paths) == len(words) and all(p.startswith(str(export_dir)) for p in paths)
            assert sample.hx.map_path.startswith(str(export_dir))
            assert word_view(sample, "hx", 1)["word"] == words[1]

        # the App panel's data path on the imported dataset
        operators = importlib_plugin()
        panel = operators.WordHeatmapsPanel()
        sample = imported.first()
        ctx = _Ctx(imported, sample.id)
        ctx.panel.state.field = "hx"
        panel.on_load(ctx)
        assert ctx.panel.state.message is None
        assert ctx.panel.data.overlay.startswith("data:image/png;base64,")
    finally:
        for dataset_name in ("t-heatmaps-export-source", name):
            if fo.dataset_exists(dataset_name):
                fo.delete_dataset(dataset_name)


def test_panel_overlay_of_a_strip_image_is_bounded_by_pixels(fo, tmp_path, plugin_installed):
    """Issue 24, part 2, item 11: a 1000x10 strip scaled to a 384 px short side was drawn at
    38400x384 (1.6 GB of work, a 15 MB overlay). The panel draws at most MAX_OVERLAY_PIXELS,
    aspect kept; small square images are still scaled up to 384 px."""
    import base64
    import io

    import fiftyone_blip
    from fiftyone_blip import word_heatmaps

    path = tmp_path / "strip.png"
    Image.new("RGB", (1000, 10), (200, 30, 30)).save(path)
    dataset = fo.Dataset()
    dataset.add_sample(fo.Sample(filepath=str(path)))
    fiftyone_blip.heatmaps(dataset, model="shapes-tiny", text="a red circle", progress=False)
    panel = importlib_plugin().WordHeatmapsPanel()
    ctx = _Ctx(dataset, dataset.first().id)
    panel.on_load(ctx)
    assert ctx.panel.state.message is None
    url = ctx.panel.data.overlay
    shown = Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1])))
    assert shown.width * shown.height <= 1 << 20
    assert abs(shown.width / shown.height - 100) < 1 and len(url) < 2_000_000
    dataset.delete()
    assert word_heatmaps.MAX_OVERLAY_PIXELS == 1 << 20
    assert word_heatmaps.display_size(96, 96) == (384, 384)
    assert word_heatmaps.display_size(20000, 15000) == (1182, 886)  # large photos are drawn smaller too
