"""Deleting a run (SDK and CLI): its fields, record, map files and index go, nothing else; and
`load_run_view` gives the view a run was made on. Against the test database with shapes-tiny."""

import pytest
from click.testing import CliRunner

import fiftyone_blip as fb
from fiftyone_blip import run_records
from fiftyone_blip.cli import main

QUIET = dict(model="shapes-tiny", progress=False)


def _fields(dataset):
    return set(dataset.get_field_schema())


def test_load_run_view_gives_the_view_the_run_was_made_on(fresh_dataset):
    fb.caption(fresh_dataset.limit(20), **QUIET)
    view = fresh_dataset.load_run_view("blip_caption_caption")
    assert len(view) == 20 and view.values("id") == fresh_dataset.limit(20).values("id")
    fb.caption(fresh_dataset, **QUIET)  # the field's latest run: the whole dataset
    assert len(fresh_dataset.load_run_view("blip_caption_caption")) == len(fresh_dataset)


def test_delete_run_removes_its_fields_and_record_and_nothing_else(fresh_dataset, fo):
    fresh_dataset.add_sample_field("caption_notes", fo.StringField)  # a user's field beside the run's
    fb.caption(fresh_dataset.limit(6), **QUIET)
    fb.caption(fresh_dataset.limit(6), field="other", **QUIET)
    before = _fields(fresh_dataset)

    plan = fb.delete_run(fresh_dataset, "blip_caption_caption", dry_run=True)
    assert set(plan.fields) == {"caption", "caption_confidence", "caption_error", "caption_run"}
    assert plan.dry_run and "would delete run 'blip_caption_caption'" in plan.lines()[-1]
    assert _fields(fresh_dataset) == before and "blip_caption_caption" in fresh_dataset.list_runs()

    fb.delete_run(fresh_dataset, "blip_caption_caption")
    assert _fields(fresh_dataset) == before - set(plan.fields)
    assert fresh_dataset.list_runs() == ["blip_caption_other"]
    assert "caption_notes" in _fields(fresh_dataset) and fresh_dataset.count("other") == 6
    assert [r["field"] for r in fb.runs(fresh_dataset)] == ["other"]
    groups = {g.name: g.paths for g in fresh_dataset.app_config.sidebar_groups}
    assert groups["BLIP captions"] == ["other", "other_confidence"]
    fb.delete_run(fresh_dataset, "blip_caption_other")
    assert "BLIP captions" not in [g.name for g in fresh_dataset.app_config.sidebar_groups]
    assert "BLIP run records" not in [g.name for g in fresh_dataset.app_config.sidebar_groups]
    with pytest.raises(ValueError, match="has no fiftyone-blip run 'blip_caption_caption' .runs: none"):
        fb.delete_run(fresh_dataset, "blip_caption_caption")


def test_a_run_key_fiftyone_blip_did_not_register_is_refused(fresh_dataset, fo):
    import fiftyone.core.runs as fors

    fresh_dataset.register_run("blip_caption_mine", fors.RunConfig(method="mine"))
    with pytest.raises(ValueError, match="no fiftyone-blip run 'blip_caption_mine'"):
        fb.delete_run(fresh_dataset, "blip_caption_mine")
    assert "blip_caption_mine" in fresh_dataset.list_runs()


def test_label_attributes_and_flags_go_and_the_label_field_and_others_tags_stay(fresh_dataset):
    fb.find_mislabels(fresh_dataset.limit(6), "gt_label", top_k=2, **QUIET)
    flagged = fresh_dataset.match_tags("mislabel").values("id")
    assert len(flagged) == 2
    by_hand = next(i for i in fresh_dataset.limit(6).values("id") if i not in flagged)
    fresh_dataset.select(by_hand).tag_samples("mislabel")  # a tag the flags did not set
    plan = fb.delete_run(fresh_dataset, "blip_match_gt_label_match")
    assert {"gt_label.gt_label_match_itm", "gt_label_match", "gt_label_match_flagged"} <= set(plan.fields)
    assert plan.tags == {"mislabel": 2}
    flat = fresh_dataset.get_field_schema(flat=True)
    assert not [name for name in flat if "gt_label_match" in name]
    assert fresh_dataset.count("gt_label") == len(fresh_dataset)
    assert fresh_dataset.match_tags("mislabel").values("id") == [by_hand]


def test_a_live_run_on_its_fields_refuses_the_deletion(fresh_dataset):
    fb.caption(fresh_dataset.limit(4), **QUIET)
    before = _fields(fresh_dataset)
    lease = run_records.Lease(fresh_dataset, ["caption"], None, "live-run")
    lease.take()
    try:
        with pytest.raises(ValueError, match="is being written by run live-run"):
            fb.delete_run(fresh_dataset, "blip_caption_caption")
    finally:
        lease.release()
    assert _fields(fresh_dataset) == before and "blip_caption_caption" in fresh_dataset.list_runs()


def test_heatmap_files_under_the_runs_folder_go_unless_another_run_refers_to_them(fresh_dataset, tmp_path, fo):
    maps_dir = tmp_path / "maps"
    maps_dir.mkdir()
    user_file = maps_dir / "mine.png"
    user_file.write_bytes(b"not the run's")
    fb.caption(fresh_dataset.limit(3), **QUIET)
    fb.heatmaps(fresh_dataset.limit(3), maps_dir=str(maps_dir), **QUIET)
    files = sorted(p for p in maps_dir.rglob("*.png") if p != user_file)
    assert len(files) >= 6
    shared = fresh_dataset.limit(1).clone(fresh_dataset.name + "-c")  # a clone refers to its sample's files
    try:
        kept = set(shared.values("heatmap.map_path")) | set(shared.values("heatmap_word_maps[].map_path"))
        plan = fb.delete_run(fresh_dataset, "blip_heatmaps_heatmap")
        assert {"heatmap", "heatmap_word_maps", "heatmap_words", "heatmap_error"} <= set(plan.fields)
        assert set(plan.kept_map_files) == kept and set(plan.map_files) == {str(p) for p in files} - kept
        assert all(not p.exists() for p in map(type(maps_dir), plan.map_files))
        assert all(type(maps_dir)(p).exists() for p in kept) and user_file.exists()
        assert "caption" in _fields(fresh_dataset)  # the text the maps explained stays
    finally:
        fo.delete_dataset(shared.name)


def test_an_embed_run_takes_its_index_and_leaves_a_users_index(fresh_dataset):
    import fiftyone.brain as fob

    fb.embed(fresh_dataset.limit(8), **QUIET)
    fob.compute_similarity(fresh_dataset.limit(8), embeddings="blip_embedding", brain_key="users_own")
    plan = fb.delete_run(fresh_dataset, "blip_embed_blip_embedding", dry_run=True)
    assert plan.brain_keys == ["blip_sim"]
    fb.delete_run(fresh_dataset, "blip_embed_blip_embedding")
    assert fresh_dataset.list_brain_runs() == ["users_own"] and "blip_embedding" not in _fields(fresh_dataset)


def test_cli_runs_delete_lists_asks_and_deletes(fresh_dataset):
    fb.caption(fresh_dataset.limit(4), **QUIET)
    runner = CliRunner()
    name, key = fresh_dataset.name, "blip_caption_caption"
    dry = runner.invoke(main, ["runs", "delete", name, key, "--dry-run"])
    assert dry.exit_code == 0, dry.output
    assert "fields: caption, caption_confidence, caption_error, caption_run" in dry.stdout
    assert "would delete run" in dry.stdout and key in fresh_dataset.list_runs()
    declined = runner.invoke(main, ["runs", "delete", name, key], input="n\n")
    assert declined.exit_code == 1 and "Aborted" in declined.output and key in fresh_dataset.list_runs()
    done = runner.invoke(main, ["runs", "delete", name, key, "--yes", "--json"])
    assert done.exit_code == 0, done.output
    assert '"run_key": "blip_caption_caption"' in done.stdout and key not in fresh_dataset.list_runs()
    missing = runner.invoke(main, ["runs", "delete", name, key, "--yes"])
    assert missing.exit_code == 1 and missing.stderr.startswith(f"Error: dataset {name!r} has no fiftyone-blip run")
    listing = runner.invoke(main, ["runs", name])  # `runs DATASET` lists, as before
    assert listing.exit_code == 0 and "no runs recorded" in listing.output


def test_a_users_saved_view_of_the_review_name_is_refused_before_any_work_and_kept(fresh_dataset):
    # label QA, CapFilt and caption evaluation replaced a saved view of their review name with
    # overwrite=True, and deleting an evaluation deleted its default name whoever had saved it
    small = fresh_dataset.limit(6)
    mine = fresh_dataset.match_tags("never").limit(1)
    fresh_dataset.save_view("gt-label-match-review", mine, description="my own review")
    fresh_dataset.save_view("eval-review", mine, description="my own eval view")
    fields_before = _fields(fresh_dataset)
    with pytest.raises(ValueError, match="`view_name` 'gt-label-match-review' is a saved view .* did not save"):
        fb.find_mislabels(small, "gt_label", **QUIET)
    with pytest.raises(ValueError, match="`view_name` 'eval-review' is a saved view"):
        fb.evaluate_captions(small, "gt_caption", "gt_caption_de", itm=False, progress=False)
    assert _fields(fresh_dataset) == fields_before and fresh_dataset.list_runs() == []
    for name, description in (("gt-label-match-review", "my own review"), ("eval-review", "my own eval view")):
        assert fresh_dataset.get_saved_view_info(name)["description"] == description

    # under free names the runs save their views; deleting a run removes the views it saved, no other
    fb.find_mislabels(small, "gt_label", view_name="qa", **QUIET)
    fb.evaluate_captions(small, "gt_caption", "gt_caption_de", eval_key="ev", itm=False, progress=False)
    assert {"qa", "ev-review"} <= set(fresh_dataset.list_saved_views())
    plan = fb.delete_run(fresh_dataset, "blip_match_gt_label_match")
    assert plan.views == ["qa"] and "saved review views: qa" in plan.lines()
    fb.delete_caption_evaluation(fresh_dataset, "ev")
    assert sorted(fresh_dataset.list_saved_views()) == ["eval-review", "gt-label-match-review"]
