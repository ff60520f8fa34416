"""The App's sidebar: a run's fields in its capability's group, `_error` / `_run` in a collapsed group."""

from fiftyone_blip import app_config as sidebar


def _groups(dataset):
    dataset.reload()
    return {g.name: (list(g.paths), g.expanded) for g in dataset.app_config.sidebar_groups}


def test_a_run_groups_its_fields_per_capability(fresh_dataset):
    import fiftyone_blip

    view = fresh_dataset.limit(4)
    fiftyone_blip.caption(view, model="shapes-tiny", progress=False, num_workers=0)
    groups = _groups(fresh_dataset)
    assert groups[sidebar.GROUPS["caption"]] == (["caption", "caption_confidence"], None)
    assert groups[sidebar.RUN_RECORDS] == (["caption_error", "caption_run"], False)  # collapsed
    # nowhere else: FiftyOne's default groups no longer list them
    others = [p for name, (paths, _) in groups.items() if name not in sidebar.GROUPS.values() for p in paths]
    assert not {"caption", "caption_confidence"} & set(others)
    assert "gt_label" in groups["labels"][0] and "gt_caption" in groups["primitives"][0]
    names = list(groups)
    assert names.index(sidebar.GROUPS["caption"]) < names.index("primitives") < names.index(sidebar.RUN_RECORDS)

    # a second capability gets its own group; the run records collect both
    fiftyone_blip.find_mislabels(view, "gt_label", model="shapes-tiny", progress=False, num_workers=0)
    groups = _groups(fresh_dataset)
    assert {"gt_label_match", "gt_label_match_flagged"} <= set(groups[sidebar.GROUPS["match"]][0])
    assert {"caption_run", "gt_label_match_run", "gt_label_match_error"} <= set(groups[sidebar.RUN_RECORDS][0])

    # a re-run changes nothing
    assert not sidebar.group_fields(fresh_dataset, "caption", ["caption", "caption_confidence"], ["caption_run"])


def test_the_app_is_told_the_groups_of_ours_and_where_a_new_one_goes(fresh_dataset):
    import fiftyone_blip

    assert sidebar.sidebar_params(fresh_dataset)["groups"] == []
    fiftyone_blip.caption(fresh_dataset.limit(2), model="shapes-tiny", progress=False, num_workers=0)
    params = sidebar.sidebar_params(fresh_dataset)
    assert params["groups"] == [
        {"name": "BLIP captions", "paths": ["caption", "caption_confidence"], "expanded": None, "before": "primitives"},
        {"name": "BLIP run records", "paths": ["caption_error", "caption_run"], "expanded": False, "before": None},
    ]
    # every group of ours is named, so that the App drops those a deleted run emptied
    assert set(params["names"]) == {*sidebar.GROUPS.values(), sidebar.RUN_RECORDS}


def test_a_field_the_user_grouped_stays_in_their_group(fresh_dataset):
    import fiftyone as fo

    import fiftyone_blip

    fresh_dataset.add_sample_field("caption", fo.StringField)
    groups = fo.DatasetAppConfig.default_sidebar_groups(fresh_dataset)
    for group in groups:
        group.paths = [p for p in group.paths if p != "caption"]
    groups.append(fo.SidebarGroupDocument(name="review", paths=["caption"]))
    fresh_dataset.app_config.sidebar_groups = groups
    fresh_dataset.save()

    fiftyone_blip.caption(fresh_dataset.limit(2), model="shapes-tiny", progress=False, num_workers=0)
    groups = _groups(fresh_dataset)
    assert groups["review"][0] == ["caption"]
    assert groups[sidebar.GROUPS["caption"]][0] == ["caption_confidence"]


def test_heatmaps_are_drawn_through_a_colorscale_unless_the_user_chose_a_colour_mode(fresh_dataset, fo):
    import fiftyone_blip

    view = fresh_dataset.limit(2)
    fiftyone_blip.heatmaps(view, model="shapes-tiny", text_field="gt_caption", progress=False, num_workers=0)
    fresh_dataset.reload()
    scheme = fresh_dataset.app_config.color_scheme
    assert scheme.color_by == "value"
    assert [(s["path"], s["name"]) for s in scheme.colorscales] == [("heatmap", "jet")]
    assert not sidebar.heatmap_colorscale(fresh_dataset, "heatmap")  # nothing more to change

    # a colour mode the user set is kept; the new field still gets its colorscale
    fresh_dataset.app_config.color_scheme = fo.ColorScheme(color_by="field", opacity=0.5)
    fresh_dataset.save()
    fiftyone_blip.heatmaps(view, model="shapes-tiny", text_field="gt_caption", field="map2", progress=False)
    fresh_dataset.reload()
    scheme = fresh_dataset.app_config.color_scheme
    assert scheme.color_by == "field" and scheme.opacity == 0.5
    assert [s["path"] for s in scheme.colorscales] == ["map2"]
