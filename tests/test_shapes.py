"""Shapes data: deterministic scenes, unambiguous captions in three languages, a FiftyOne loader."""

import os

import numpy as np
import pytest

from fiftyone_blip.shapes import data


def test_same_arguments_give_the_same_scene_and_pixels():
    a, b = data.make_scene(7, "test", seed=3), data.make_scene(7, "test", seed=3)
    assert a == b
    assert np.array_equal(np.asarray(a.render()), np.asarray(b.render()))


def test_splits_and_seeds_differ():
    captions = {split: [s.caption() for s in data.make_scenes(50, split)] for split in data.SPLIT_SEEDS}
    assert captions["train"] != captions["test"] != captions["validation"]
    assert [s.caption() for s in data.make_scenes(50, "test", seed=1)] != captions["test"]


def test_scenes_vary_and_objects_sit_in_distinct_cells():
    scenes = data.make_scenes(300, "train")
    assert {len(s.objects) for s in scenes} == {1, 2, 3}
    assert {o.kind for s in scenes for o in s.objects} == set(data.KINDS)
    assert {o.colour for s in scenes for o in s.objects} == set(data.COLOURS)
    assert {o.cell for s in scenes for o in s.objects} == set(data.POSITIONS)
    assert len({s.background for s in scenes}) == len(data.BACKGROUNDS)
    sides = [o.box[2] - o.box[0] for s in scenes for o in s.objects]
    assert max(sides) - min(sides) >= 10
    for scene in scenes:
        cells = [o.cell for o in scene.objects]
        assert len(set(cells)) == len(cells)
        assert cells == sorted(cells)  # caption order is reading order
        for obj in scene.objects:
            x0, y0, x1, y1 = obj.box
            assert 0 <= x0 < x1 <= scene.size and 0 <= y0 < y1 <= scene.size
            # the box lies inside its grid cell, so the position word is never ambiguous
            row, col = obj.cell
            cell = scene.size / 3
            assert col * cell <= x0 and x1 <= (col + 1) * cell + 1
            assert row * cell <= y0 and y1 <= (row + 1) * cell + 1


def test_captions_in_three_languages():
    scene = data.ShapeScene(
        0,
        "test",
        96,
        (250, 250, 250),
        (
            data.ShapeObject("circle", "red", (0, 0), (2, 2, 20, 20)),
            data.ShapeObject("square", "green", (1, 1), (35, 35, 55, 55)),
            data.ShapeObject("star", "yellow", (2, 2), (70, 70, 90, 90)),
        ),
        0,
    )
    assert scene.caption("en") == (
        "a red circle at the top left, a green square in the center and a yellow star at the bottom right"
    )
    assert scene.caption("de") == (
        "ein roter Kreis oben links, ein grünes Quadrat in der Mitte und ein gelber Stern unten rechts"
    )
    assert scene.caption("ru") == "красный круг вверху слева, зелёный квадрат в центре и жёлтая звезда внизу справа"
    assert scene.objects[0].words == ["red", "circle"]
    with pytest.raises(ValueError, match="language"):
        scene.caption("fr")


def test_english_caption_form():
    assert all(data.is_english_caption(s.caption()) for s in data.make_scenes(200, "test"))
    for text in (
        "a red circle at the top left star at the top",  # a word tacked on after a finished caption
        "a red circle at the top left, a green square",  # a phrase without its position
        "a red circle at the top left and",
        "a big circle in the center",
        "a red circle in the center, a blue star on the left",  # no final "and"
    ):
        assert not data.is_english_caption(text), text


def test_label_is_the_largest_shape():
    scene = data.ShapeScene(
        0,
        "test",
        96,
        (0, 0, 0),
        (
            data.ShapeObject("circle", "red", (0, 0), (0, 0, 10, 10)),
            data.ShapeObject("star", "blue", (0, 1), (32, 0, 60, 28)),
        ),
        0,
    )
    assert scene.label == "star"


def test_load_dataset_builds_a_persistent_dataset_with_ground_truth(fo, tmp_path):
    import fiftyone_blip

    dataset = fiftyone_blip.load_shapes_dataset("shapes-loader-test", count=5, images_dir=tmp_path, overwrite=True)
    assert dataset.persistent and len(dataset) == 5
    sample = dataset.first()
    scene = data.make_scene(0, "test")
    assert sample["gt_caption"] == scene.caption("en")
    assert sample["gt_caption_de"] == scene.caption("de")
    assert sample["gt_caption_ru"] == scene.caption("ru")
    assert sample["gt_label"].label == scene.label
    detections = sample["gt_objects"].detections
    assert [d.label for d in detections] == [o.kind for o in scene.objects]
    assert detections[0]["words"] == scene.objects[0].words
    x, y, w, h = detections[0].bounding_box
    assert 0 <= x and 0 <= y and x + w <= 1 and y + h <= 1
    # loading again with the same settings reuses it
    again = fiftyone_blip.load_shapes_dataset("shapes-loader-test", count=5, images_dir=tmp_path)
    assert again.first().id == sample.id
    dataset.delete()


def test_bad_arguments():
    with pytest.raises(ValueError, match="split"):
        data.make_scene(0, "holdout")
    with pytest.raises(ValueError, match="count"):
        data.make_scenes(-1)


def test_load_dataset_never_replaces_a_dataset_it_did_not_build(fo, tmp_path):
    """Issue 24, part 2, item 1: a user's dataset of that name is refused, with or without
    overwrite; a built one with other settings is rebuilt only when asked."""
    import fiftyone_blip

    name = "shapes-not-mine"
    if fo.dataset_exists(name):
        fo.delete_dataset(name)
    mine = fo.Dataset(name, persistent=True)
    mine.add_sample(fo.Sample(filepath=str(tmp_path / "x.png"), caption="my own words"))
    for overwrite in (False, True):
        with pytest.raises(ValueError, match="not built by") as error:
            fiftyone_blip.load_shapes_dataset(name, count=3, images_dir=tmp_path, overwrite=overwrite)
        assert "\n" not in str(error.value)
        assert fo.load_dataset(name).first()["caption"] == "my own words"
    mine.delete()

    built = fiftyone_blip.load_shapes_dataset(name, count=3, images_dir=tmp_path)
    built.save_view("two", built.limit(2))
    with pytest.raises(ValueError, match="overwrite"):
        fiftyone_blip.load_shapes_dataset(name, count=4, images_dir=tmp_path)
    assert len(fo.load_dataset(name)) == 3 and fo.load_dataset(name).has_saved_view("two")
    # its images gone: rendered again, the dataset and its saved view kept
    for path in built.values("filepath"):
        os.remove(path)
    again = fiftyone_blip.load_shapes_dataset(name, count=3, images_dir=tmp_path)
    assert again.has_saved_view("two") and all(os.path.exists(p) for p in again.values("filepath"))
    rebuilt = fiftyone_blip.load_shapes_dataset(name, count=4, images_dir=tmp_path, overwrite=True)
    assert len(rebuilt) == 4
    rebuilt.delete()


def test_shapes_and_demo_commands_leave_other_datasets_alone(fo, tmp_path, plugin_installed):
    """Item 1 through the CLI: `shapes NAME` refuses a user's dataset in one line; `demo` reuses
    a dataset it built (saved views kept) and refuses anyone else's."""
    from click.testing import CliRunner

    import fiftyone_blip
    from fiftyone_blip.cli import main

    name = "shapes-cli-not-mine"
    if fo.dataset_exists(name):
        fo.delete_dataset(name)
    mine = fo.Dataset(name, persistent=True)
    mine.add_sample(fo.Sample(filepath=str(tmp_path / "x.png"), caption="my own words"))
    for command in (["shapes", name, "-n", "3", "--overwrite"], ["demo", "--name", name, "-n", "3"]):
        result = CliRunner().invoke(main, command)
        assert result.exit_code == 1 and "not built by" in result.output, result.output
        assert len(result.output.strip().splitlines()) == 1
        assert fo.load_dataset(name).first()["caption"] == "my own words"
    mine.delete()

    built = fiftyone_blip.load_shapes_dataset(name, count=3, images_dir=tmp_path)
    built.save_view("two", built.limit(2))
    result = CliRunner().invoke(main, ["demo", "--name", name, "-n", "5"])
    assert result.exit_code == 0, result.output
    kept = fo.load_dataset(name)
    assert len(kept) == 3 and kept.has_saved_view("two") and kept.count("caption") == 3
    kept.delete()
