"""Hostile inputs to the capability modules: filtered views, shared folders, deleted samples,
odd templates and settings, broken files. Each test pins one defect found by hostile testing."""

import pytest

import fiftyone_blip

# --- mislabels on filtered label lists -----------------------------------------------------------------------


def _itm_by_label_id(collection, list_path, attribute):
    return {
        label.id: label[attribute] if attribute in label else None
        for labels in collection.values(list_path)
        for label in labels or []
    }


def _wanted_kind(dataset, list_path):
    """A label kind that most samples hold among others (so filtering drops some labels)."""
    counts = dataset.count_values(f"{list_path}.label")
    return max(counts, key=counts.get)


@pytest.mark.parametrize("kind", ["detections", "classifications"])
def test_mislabels_on_a_filter_labels_view_write_by_label_id(fresh_dataset, fo, kind):
    from fiftyone import ViewField as F

    dataset = fresh_dataset.limit(8).clone(fresh_dataset.name + "-8")
    try:
        if kind == "classifications":
            for sample in dataset:
                kinds = sorted({d.label for d in sample.gt_objects.detections})
                sample["gt_kinds"] = fo.Classifications(classifications=[fo.Classification(label=k) for k in kinds])
                sample.save()
            label_field, list_path = "gt_kinds", "gt_kinds.classifications"
        else:
            label_field, list_path = "gt_objects", "gt_objects.detections"
        # reference: every label scored in the unfiltered dataset (ITM of a label's own prompt
        # does not depend on which other labels are scored when margins are off)
        reference = dataset.clone(dataset.name + "-ref")
        try:
            fiftyone_blip.find_mislabels(
                reference, label_field, model="shapes-tiny", margin=False, progress=False, num_workers=0
            )
            expected = _itm_by_label_id(reference, list_path, f"{label_field}_match_itm")
        finally:
            reference.delete()
        wanted = _wanted_kind(dataset, list_path)
        view = dataset.filter_labels(label_field, F("label") == wanted)
        in_view = {label.id for labels in view.values(list_path) for label in labels or []}
        total = len(expected)
        assert 0 < len(in_view) < total  # the filter drops some labels

        result = fiftyone_blip.find_mislabels(
            view, label_field, model="shapes-tiny", margin=False, progress=False, num_workers=0
        )
        assert result["run"].done == len(view)
        stored = _itm_by_label_id(dataset, list_path, f"{label_field}_match_itm")
        assert len(stored) == total
        for label_id, score in stored.items():
            if label_id in in_view:
                assert score == pytest.approx(expected[label_id], abs=1e-5), label_id
            else:
                assert score is None, f"label {label_id} outside the view got a score"
        # flags too land on the view's labels only
        flagged = _itm_by_label_id(dataset, list_path, f"{label_field}_match_mistakenness")
        assert all((flagged[i] is not None) == (i in in_view) for i in stored)
    finally:
        dataset.delete()


# --- heatmap PNG folders shared between runs -----------------------------------------------------------------


def _files_of(dataset, field):
    """{path: bytes} of every PNG the samples' heatmaps refer to."""
    paths = [p for ps in dataset.values(f"{field}_map_paths") for p in ps or []]
    paths += [h.map_path for h in dataset.values(field) if h is not None]
    return {p: open(p, "rb").read() for p in paths}


def test_another_datasets_heatmaps_never_replace_stored_maps(fresh_dataset, tmp_path):
    first = fresh_dataset.limit(3).clone(fresh_dataset.name + "-a")
    second = fresh_dataset.limit(3).clone(fresh_dataset.name + "-b")
    try:
        options = dict(model="shapes-tiny", text="a red circle", mode="gradcam", maps_dir=str(tmp_path))
        fiftyone_blip.heatmaps(first, map_size=32, progress=False, num_workers=0, **options)
        before = _files_of(first, "heatmap")
        assert len(before) >= 3 * 4
        # the same images, field and folder; other settings give other maps
        fiftyone_blip.heatmaps(second, map_size=48, progress=False, num_workers=0, **options)
        assert _files_of(first, "heatmap") == before
        after = _files_of(second, "heatmap")
        assert not set(after) & set(before)
    finally:
        first.delete()
        second.delete()


# --- heatmap maps folders that cannot be written -------------------------------------------------------------


@pytest.fixture
def small_mount(tmp_path):
    """A factory: `small_mount(options)` mounts a small tmpfs ("size=200k", "ro") on a fresh
    folder and returns it (skips where mounting is not allowed); unmounted after the test."""
    import subprocess

    mounted = []

    def mount(options):
        folder = tmp_path / f"mount{len(mounted)}"
        folder.mkdir()
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(folder)], capture_output=True)
        if done.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
        mounted.append(folder)
        return folder

    yield mount
    for folder in mounted:
        subprocess.run(["umount", str(folder)], check=False)


def _files_under(folder):
    return {str(p) for p in folder.rglob("*") if p.is_file()}


def _referenced(dataset, field="heatmap"):
    return {p for ps in dataset.values(f"{field}_map_paths") for p in ps or []} | {
        h.map_path for h in dataset.values(field) if h is not None
    }


def test_read_only_maps_folder_is_refused_before_the_model_loads(fresh_dataset, small_mount, monkeypatch):
    from fiftyone_blip import models

    read_only = small_mount("size=200k,ro")

    def no_load(*args, **kwargs):
        raise AssertionError("the model was loaded")

    monkeypatch.setattr(models, "load_model", no_load)
    view = fresh_dataset.limit(2)
    for maps_dir in (read_only, read_only / "sub"):
        with pytest.raises(ValueError, match="`maps_dir` .* is not a writable folder .*Read-only"):
            fiftyone_blip.heatmaps(
                view, model="shapes-tiny", mode="gradcam", text="a red circle", maps_dir=str(maps_dir), progress=False
            )
    assert "heatmap_run" not in fresh_dataset.get_field_schema()


def _heatmaps_until_full(dataset, maps_dir):
    return fiftyone_blip.heatmaps(
        dataset,
        model="shapes-tiny",
        mode="gradcam",
        text="a red circle",
        maps_dir=str(maps_dir),
        map_size=64,
        batch_size=2,
        progress=False,
        num_workers=0,
    )


def _check_saved_and_no_orphans(dataset, maps_dir):
    done = dataset.exists("heatmap")
    assert len(done) > 0  # what was done before the disk filled up is saved
    assert len(done) < len(dataset)
    referenced = _referenced(done)
    assert all(__import__("os").path.exists(p) for p in referenced)
    assert _files_under(maps_dir) == referenced  # no file that no sample refers to


def test_disk_full_mid_run_stops_with_one_line_after_saving_what_was_done(fresh_dataset, small_mount):
    full = small_mount("size=200k")
    dataset = fresh_dataset.limit(40).clone(fresh_dataset.name + "-full")
    try:
        with pytest.raises(OSError, match="heatmap maps could not be written .*No space left") as raised:
            _heatmaps_until_full(dataset, full)
        assert "\n" not in str(raised.value)
        _check_saved_and_no_orphans(dataset, full)
    finally:
        dataset.delete()


def test_disk_full_simulated_mid_run(fresh_dataset, tmp_path, monkeypatch):
    """The same without a mount: the 13th PNG write raises ENOSPC."""
    import errno

    from PIL import Image

    save = Image.Image.save
    calls = []

    def failing_save(self, fp, *args, **kwargs):
        calls.append(fp)
        if len(calls) >= 13:
            raise OSError(errno.ENOSPC, "No space left on device", str(fp))
        return save(self, fp, *args, **kwargs)

    monkeypatch.setattr(Image.Image, "save", failing_save)
    dataset = fresh_dataset.limit(8).clone(fresh_dataset.name + "-sim")
    try:
        with pytest.raises(OSError, match="heatmap maps could not be written .*No space left"):
            _heatmaps_until_full(dataset, tmp_path)
        _check_saved_and_no_orphans(dataset, tmp_path)
    finally:
        dataset.delete()


def test_heatmap_overlays_cli_to_an_unwritable_folder_is_one_line(fresh_dataset, tmp_path):
    from click.testing import CliRunner

    from fiftyone_blip.cli import main

    view = fresh_dataset.limit(1)
    fiftyone_blip.heatmaps(view, model="shapes-tiny", mode="gradcam", text="a red circle", progress=False)
    in_the_way = tmp_path / "a-file"
    in_the_way.write_text("")
    result = CliRunner().invoke(main, ["heatmap-overlays", fresh_dataset.name, str(in_the_way / "report")])
    assert result.exit_code == 1 and result.exception.__class__ is SystemExit, result.output
    assert "`output_dir`" in result.output and "not a writable folder" in result.output


# --- search after deletions, and over views without indexed samples -----------------------------------------


@pytest.fixture
def embedded_20(fresh_dataset):
    dataset = fresh_dataset.limit(20).clone(fresh_dataset.name + "-20")
    fiftyone_blip.embed(dataset, model="shapes-tiny", progress=False, num_workers=0)
    yield dataset
    dataset.delete()


def test_search_returns_k_hits_after_indexed_samples_were_deleted(embedded_20):
    dataset = embedded_20
    ids = dataset.values("id")
    dataset.delete_samples(ids[:8])
    hits = fiftyone_blip.search(dataset, "a red circle", k=12)
    assert len(hits) == 12 and len({h.id for h in hits}) == 12
    assert {h.id for h in hits} == set(ids[8:])
    # more like this: the query sample is not its own neighbour
    query = ids[10]
    similar = fiftyone_blip.search(dataset, query, k=5)
    assert len(similar) == 5 and query not in {h.id for h in similar}
    assert fiftyone_blip.search(dataset, query, k=11)  # every other remaining sample
    # a view of remaining samples, some indexed
    view = dataset.select(ids[8:14])
    assert len(fiftyone_blip.search(view, "a red circle", k=6)) == 6


def test_search_of_a_view_without_indexed_samples_is_one_line(embedded_20, fo, monkeypatch):
    from fiftyone_blip import models

    dataset = embedded_20
    extra = dataset.limit(3).clone(dataset.name + "-x")  # new samples: never indexed
    try:
        dataset.add_samples([fo.Sample(filepath=p) for p in extra.values("filepath")], progress=False)
        not_indexed = dataset.exists("blip_embedding", False)
        assert len(not_indexed) == 3
        monkeypatch.setattr(models, "load_model", lambda *a, **k: pytest.fail("the model was loaded"))
        with pytest.raises(ValueError, match="no sample of the searched view is in the index 'blip_sim'"):
            fiftyone_blip.search(not_indexed, "a red circle", k=2)
        with pytest.raises(ValueError, match="no sample of the searched view is in the index 'blip_sim'"):
            fiftyone_blip.search(not_indexed, dataset.first().id, k=2)
    finally:
        extra.delete()


# --- label templates -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "template", ["a {label:>20000000}", "a {label:d}", "a {label!r}", "a {label!s:>5}", "{label}{label:^3}"]
)
def test_templates_with_a_format_spec_or_conversion_are_refused_before_the_model_loads(
    fresh_dataset, monkeypatch, template
):
    from fiftyone_blip import matching, models

    monkeypatch.setattr(models, "load_model", lambda *a, **k: pytest.fail("the model was loaded"))
    with pytest.raises(ValueError, match="only the plain") as raised:
        fiftyone_blip.find_mislabels(fresh_dataset, "gt_label", model="shapes-tiny", template=template, progress=False)
    assert repr(template) in str(raised.value) and "\n" not in str(raised.value)
    with pytest.raises(ValueError, match="only the plain"):
        matching.check_template(template)


def test_plain_templates_with_escaped_braces_pass():
    from fiftyone_blip import matching

    for template in ("{label}", "a photo of a {label}", "{{not a field}} {label}", "a {label} {{x}}"):
        assert matching.check_template(template) == template
    assert matching.MatchSettings(kind="classification", template="{{x}} {label}", classes=["a"]).prompt("b") == "{x} b"


# --- caption settings beyond the model's limits --------------------------------------------------------------


@pytest.mark.parametrize(
    "settings, message",
    [
        ({"strategy": "sample", "temperature": float("inf")}, "`temperature` must be a finite number"),
        ({"strategy": "sample", "temperature": float("nan")}, "`temperature` must be a finite number"),
        ({"strategy": "sample", "seed": 2**70}, r"`seed` must be an integer in 0\.\.9223372036854775807"),
        ({"strategy": "sample", "seed": -1}, "`seed` must be an integer"),
        ({"repetition_penalty": float("inf")}, "`repetition_penalty` must be a finite number"),
    ],
)
def test_unusable_sampling_settings_are_refused_before_the_model_loads(fresh_dataset, monkeypatch, settings, message):
    from fiftyone_blip import models

    monkeypatch.setattr(models, "load_model", lambda *a, **k: pytest.fail("the model was loaded"))
    with pytest.raises(ValueError, match=message):
        fiftyone_blip.caption(fresh_dataset.limit(2), model="shapes-tiny", progress=False, **settings)


@pytest.mark.parametrize(
    "settings, message",
    [
        ({"prompt": " ".join(["red circle"] * 40)}, "`prompt` is 81 tokens .* at most 63"),
        (
            {"prompt": "a red circle and a blue", "min_new_tokens": 60, "max_new_tokens": 100},
            "`min_new_tokens` must be at most 57",
        ),
    ],
)
def test_prompts_beyond_the_text_positions_are_refused_before_any_sample(fresh_dataset, settings, message):
    view = fresh_dataset.limit(2)
    with pytest.raises(ValueError, match=message):
        fiftyone_blip.caption(view, model="shapes-tiny", field="long", progress=False, num_workers=0, **settings)
    assert "long_run" not in fresh_dataset.get_field_schema()  # no sample touched
    assert not [r for r in fiftyone_blip.runs(fresh_dataset) if r["field"] == "long"]


def test_captions_stop_at_the_last_text_position(fresh_dataset):
    """min_new_tokens fills the 64 positions of shapes-tiny: generation must stop there, not fail."""
    view = fresh_dataset.limit(2)
    summary = fiftyone_blip.caption(
        view,
        model="shapes-tiny",
        strategy="sample",
        temperature=50.0,
        min_new_tokens=63,
        max_new_tokens=128,
        repetition_penalty=1.0,
        progress=False,
        num_workers=0,
    )
    assert summary.done == 2 and summary.failed == 0
    assert all(len(c.split()) > 20 for c in view.values("caption"))
