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
    paths = [p for ps in dataset.values(f"{field}_word_maps.map_path") for p in ps or []]
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
    return {p for ps in dataset.values(f"{field}_word_maps.map_path") for p in ps or []} | {
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
    hits = fiftyone_blip.search(dataset, "a red circle", k=12).values("id")
    assert len(hits) == 12 and len(set(hits)) == 12
    assert set(hits) == set(ids[8:])
    # more like this: the query sample is not its own neighbour
    query = ids[10]
    similar = fiftyone_blip.search(dataset, query, k=5).values("id")
    assert len(similar) == 5 and query not in similar
    assert len(fiftyone_blip.search(dataset, query, k=11)) == 11  # every other remaining sample
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
    from fiftyone_blip import mislabels as matching
    from fiftyone_blip import models

    monkeypatch.setattr(models, "load_model", lambda *a, **k: pytest.fail("the model was loaded"))
    with pytest.raises(ValueError, match="only the plain") as raised:
        fiftyone_blip.find_mislabels(fresh_dataset, "gt_label", model="shapes-tiny", template=template, progress=False)
    assert repr(template) in str(raised.value) and "\n" not in str(raised.value)
    with pytest.raises(ValueError, match="only the plain"):
        matching.check_template(template)


def test_plain_templates_with_escaped_braces_pass():
    from fiftyone_blip import mislabels as matching

    for template in ("{label}", "a photo of a {label}", "{{not a field}} {label}", "a {label} {{x}}"):
        assert matching.check_template(template) == template
    assert matching.MatchSettings(kind="classification", template="{{x}} {label}", classes=["a"]).prompt("b") == "{x} b"


# --- caption settings beyond the model's limits --------------------------------------------------------------


@pytest.mark.parametrize(
    "settings, message",
    [
        ({"strategy": "sample", "temperature": float("inf")}, "`temperature` must be a finite number"),
        ({"strategy": "sample", "temperature": float("nan")}, "`temperature` must be a (finite )?number"),
        ({"strategy": "sample", "seed": 2**70}, "`seed` must be a whole number from 0 to 9223372036854775807"),
        ({"strategy": "sample", "seed": -1}, "`seed` must be a whole number"),
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


# --- broken language adapters --------------------------------------------------------------------------------


@pytest.fixture
def registry(tmp_path, monkeypatch):
    from fiftyone_blip import adapters

    folder = tmp_path / "registry"
    folder.mkdir()
    monkeypatch.setenv(adapters.REGISTRY_ENV, str(folder))
    return folder


def _copy_bundled_adapter(registry, language, manifest=None):
    import json
    import shutil

    from fiftyone_blip import adapters

    target = registry / language
    shutil.copytree(adapters.BUNDLED_ADAPTERS_DIR / "de", target)
    if manifest is not None:
        (target / adapters.MANIFEST_FILE).write_text(manifest if isinstance(manifest, str) else json.dumps(manifest))
    else:
        data = json.loads((target / adapters.MANIFEST_FILE).read_text())
        (target / adapters.MANIFEST_FILE).write_text(json.dumps({**data, "language": language}))
    return target


def _bundled_manifest():
    import json

    from fiftyone_blip import adapters

    return json.loads((adapters.BUNDLED_ADAPTERS_DIR / "de" / adapters.MANIFEST_FILE).read_text())


BROKEN_MANIFESTS = {
    "aa": "[]",
    "ab": "{not json",
    "ae": {**_bundled_manifest(), "language": "ae", "base_model": "shapes-tiny"},
    "af": {k: v for k, v in {**_bundled_manifest(), "language": "af"}.items() if k != "tokenizer"},
    "ak": {**_bundled_manifest(), "language": "ak", "tokenizer": {"added_tokens": "many"}},
}


def test_broken_registry_adapters_are_skipped_and_named(registry, fresh_dataset, plugin_installed, caplog):
    import fiftyone.operators as foo
    from click.testing import CliRunner
    from fiftyone.operators.executor import ExecutionContext

    from fiftyone_blip import adapters
    from fiftyone_blip.cli import main

    for language, manifest in BROKEN_MANIFESTS.items():
        _copy_bundled_adapter(registry, language, manifest)
    with caplog.at_level("WARNING"):
        languages = {m["language"] for m in adapters.installed_adapters("shapes-tiny")}
    assert {"de", "ru"} <= languages and not languages & set(BROKEN_MANIFESTS)
    for language in BROKEN_MANIFESTS:
        assert str(registry / language) in caplog.text

    # the App's caption form still opens, English first
    operator = foo.OperatorRegistry().get_operator("@fiftyone-blip/blip/caption_samples")
    ctx = ExecutionContext(request_params={"dataset_name": fresh_dataset.name, "params": {"model": "shapes-tiny"}})
    choices = [c.value for c in operator.resolve_input(ctx).type.properties["language"].view.choices]
    assert choices[0] == "en" and {"de", "ru"} <= set(choices)

    result = CliRunner().invoke(main, ["adapters", "list"])
    assert result.exit_code == 0, result.output
    for language in BROKEN_MANIFESTS:
        line = next(line for line in result.output.splitlines() if str(registry / language) in line)
        assert "broken" in line and "manifest.json" in line
    assert any(line.startswith("de ") for line in result.output.splitlines())

    # a healthy bundled adapter still captions, beside a manifest without "tokenizer"
    view = fresh_dataset.limit(2)
    summary = fiftyone_blip.caption(view, model="shapes-tiny", language="de", field="caption_de", progress=False)
    assert summary.done == 2


def _english(view):
    fiftyone_blip.caption(view, model="shapes-tiny", field="en", overwrite=True, progress=False, num_workers=0)
    return view.values(["en", "en_confidence"])


def _state(loaded):
    model = loaded.model
    hooks = sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())
    return {k: v.clone() for k, v in model.state_dict().items()}, hooks, type(model.text_decoder).__name__


@pytest.mark.parametrize(
    "damage", ["truncated-weights", "no-tokenizer-config", "bad-adapter-config", "peft-fails-after-loading"]
)
def test_a_failed_adapter_load_leaves_the_cached_model_as_it_was(registry, fresh_dataset, damage, monkeypatch):
    import peft
    import torch

    from fiftyone_blip import adapters, models

    view = fresh_dataset.limit(3)
    # a fresh model object: earlier tests in this process may have attached adapters to the cached one
    models._load.cache_clear()
    loaded = models.load_model("shapes-tiny", task="caption")
    before = _english(view)
    weights, hooks, decoder = _state(loaded)

    target = _copy_bundled_adapter(registry, "de")  # the registry's "de" comes before the bundled one
    if damage == "truncated-weights":
        data = (target / adapters.WEIGHTS_FILE).read_bytes()
        (target / adapters.WEIGHTS_FILE).write_bytes(data[: len(data) // 2])
        message = "adapter_model.safetensors"
    elif damage == "no-tokenizer-config":
        (target / "tokenizer_config.json").unlink()
        message = "tokenizer_config.json"
    elif damage == "bad-adapter-config":
        (target / "adapter_config.json").write_text('{"peft_type": "LORA", "r": "eight"}')
        message = "adapter_config.json"
    else:  # the files are fine; peft fails after it has wrapped the model's layers
        original = peft.PeftModel.from_pretrained

        def failing(*args, **kwargs):
            original(*args, **kwargs)
            raise RuntimeError("simulated failure")

        monkeypatch.setattr(peft.PeftModel, "from_pretrained", failing)
        message = "simulated failure"
    with pytest.raises(adapters.AdapterError, match=message) as raised:
        fiftyone_blip.caption(view, model="shapes-tiny", language="de", field="de", progress=False)
    assert str(target) in str(raised.value)

    assert models.load_model("shapes-tiny", task="caption") is loaded  # the same cached model
    after_weights, after_hooks, after_decoder = _state(loaded)
    assert after_hooks == hooks and after_decoder == decoder
    assert after_weights.keys() == weights.keys()
    assert all(torch.equal(after_weights[k], weights[k]) for k in weights)
    assert _english(view) == before  # exactly


# --- truncated weights -----------------------------------------------------------------------------------------


def test_truncated_model_weights_are_a_model_load_error_naming_the_file(tmp_path):
    import shutil

    from fiftyone_blip import models

    folder = tmp_path / "captioner"
    shutil.copytree(models.BUNDLED["shapes-tiny"]["caption"], folder)
    weights = folder / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])
    with pytest.raises(models.ModelLoadError, match="model.safetensors") as raised:
        models.load_model(str(folder), task="caption", device="cpu")
    assert str(weights) in str(raised.value) and "\n" not in str(raised.value)


# --- brain keys --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("brain_key", ["not valid", "../x", "1st", "", "a-b"])
def test_invalid_brain_keys_are_refused_before_any_image_is_embedded(fresh_dataset, monkeypatch, brain_key):
    from fiftyone_blip import models

    monkeypatch.setattr(models, "load_model", lambda *a, **k: pytest.fail("the model was loaded"))
    with pytest.raises(
        ValueError,
        match="`brain_key` must be (a valid Python identifier|a non-empty name|letters, digits and underscores)",
    ):
        fiftyone_blip.embed(fresh_dataset.limit(2), model="shapes-tiny", brain_key=brain_key, progress=False)
    assert not fiftyone_blip.runs(fresh_dataset)


# --- paths from App forms ----------------------------------------------------------------------------------------

HEATMAPS_URI = "@fiftyone-blip/blip/compute_heatmaps"


def _heatmaps_operator(view, **params):
    import fiftyone.operators as foo

    defaults = dict(model="shapes-tiny", field="heatmap", mode="gradcam", text_source="text", text="a red circle")
    params = {**defaults, "view_target": "CURRENT_VIEW", **params}
    return foo.execute_operator(HEATMAPS_URI, ctx=dict(view=view, params=params))


def _heatmaps_error(view, **params):
    """The error of a heatmaps operator run: the form's validation or the run's (None: it ran)."""
    from fiftyone.operators.executor import ExecutionError

    try:
        result = _heatmaps_operator(view, **params)
    except ExecutionError as error:
        return str(error)
    return result.error_message if result.error else None


def _heatmaps_form(dataset, **params):
    import fiftyone.operators as foo
    from fiftyone.operators.executor import ExecutionContext

    operator = foo.OperatorRegistry().get_operator(HEATMAPS_URI)
    ctx = ExecutionContext(request_params={"dataset_name": dataset.name, "params": params})
    return operator.resolve_input(ctx).type.properties


def test_app_maps_folders_are_confined_to_the_app_root(fresh_dataset, plugin_installed, tmp_path, monkeypatch):
    view = fresh_dataset.limit(1)
    outside = tmp_path / "outside"
    monkeypatch.delenv("FIFTYONE_BLIP_APP_ROOT", raising=False)
    assert "maps_dir" not in _heatmaps_form(fresh_dataset)  # not offered without a root
    for maps_dir in (str(outside), "../outside"):
        assert "is not available in the App" in (_heatmaps_error(view, maps_dir=maps_dir) or "")
    assert not outside.exists()

    root = tmp_path / "app-root"
    root.mkdir()
    monkeypatch.setenv("FIFTYONE_BLIP_APP_ROOT", str(root))
    assert "maps_dir" in _heatmaps_form(fresh_dataset)
    for maps_dir in (str(outside), "../outside", "maps/../../outside"):
        assert "must be a folder under" in (_heatmaps_error(view, maps_dir=maps_dir) or ""), maps_dir
        form = _heatmaps_form(fresh_dataset, maps_dir=maps_dir)
        assert form["maps_dir"].invalid  # flagged at its input
    assert not outside.exists()
    _heatmaps_operator(view, maps_dir="maps").raise_exceptions()
    assert all(h.map_path.startswith(str(root / "maps")) for h in view.first().heatmap_word_maps)


def test_app_models_are_bundled_hub_ids_or_folders_under_the_root(
    fresh_dataset, plugin_installed, tmp_path, monkeypatch
):
    import shutil

    from fiftyone_blip import models

    view = fresh_dataset.limit(1)
    monkeypatch.delenv("FIFTYONE_BLIP_APP_ROOT", raising=False)
    # an existing folder without config.json and a path that does not exist read the same
    (tmp_path / "exists").mkdir()
    messages = []
    for model in (str(tmp_path / "exists"), str(tmp_path / "missing"), "../../etc"):
        message = _heatmaps_error(view, model=model, field="hm_model") or ""
        assert "must be shapes-tiny or a hub id" in message
        messages.append(message.replace(model, "MODEL"))
    assert messages[0] == messages[1] and "does not exist" not in messages[0] and "config.json" not in messages[0]

    root = tmp_path / "app-root"
    shutil.copytree(models.BUNDLED["shapes-tiny"]["match"], root / "matcher")
    monkeypatch.setenv("FIFTYONE_BLIP_APP_ROOT", str(root))
    assert "must be" in (_heatmaps_error(view, model=str(tmp_path / "missing"), field="hm_model") or "")
    _heatmaps_operator(view, model="matcher", field="hm_root").raise_exceptions()
    assert view.first().hm_root is not None


def test_app_hub_ids_never_load_a_server_folder_of_that_name(fresh_dataset, plugin_installed, tmp_path, monkeypatch):
    """Issue 24, part 2, item 4: a hub-shaped App model name (`private/model`) that names a folder
    relative to the server's working directory loads from the hub (here: its offline cache), never
    from that folder; the error of one that is not cached is the same whether the folder exists."""
    import shutil

    import huggingface_hub.constants as hub

    from fiftyone_blip import models

    monkeypatch.setattr(hub, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(hub, "HF_HUB_CACHE", str(tmp_path / "hub-cache"))
    monkeypatch.delenv("FIFTYONE_BLIP_APP_ROOT", raising=False)
    server_cwd = tmp_path / "server"
    shutil.copytree(models.BUNDLED["shapes-tiny"]["match"], server_cwd / "private" / "model")
    (server_cwd / "private" / "other").mkdir()
    monkeypatch.chdir(server_cwd)
    view = fresh_dataset.limit(1)
    messages = []
    for name in ("private/model", "private/other", "private/missing"):
        message = _heatmaps_error(view, model=name, field="hm_hub") or ""
        assert "not in the local Hugging Face cache" in message, message
        assert str(tmp_path) not in message
        messages.append(message.replace(name, "NAME"))
    assert len(set(messages)) == 1
    assert "hm_hub" not in fresh_dataset.get_field_schema()

    # the hub's own files, cached: they load, not the server folder of the same name
    commit = "0" * 40
    repo = tmp_path / "hub-cache" / "models--private--model"
    shutil.copytree(models.BUNDLED["shapes-tiny"]["match"], repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    (server_cwd / "private" / "model" / "config.json").write_text('{"model_type": "bert"}')
    _heatmaps_operator(view, model="private/model", field="hm_hub").raise_exceptions()
    assert view.first().hm_hub is not None

    # under an App root, a folder of that name inside the root is the model
    root = tmp_path / "app-root"
    shutil.copytree(models.BUNDLED["shapes-tiny"]["match"], root / "private" / "model")
    shutil.rmtree(repo)
    monkeypatch.setenv("FIFTYONE_BLIP_APP_ROOT", str(root))
    _heatmaps_operator(view, model="private/model", field="hm_root").raise_exceptions()
    fresh_dataset.reload()
    assert fresh_dataset.count("hm_root") == 1


def test_app_operators_read_only_the_inputs_their_forms_declare(fresh_dataset, plugin_installed, tmp_path, monkeypatch):
    """Issue 24, part 2, item 3: params a form never shows (`out`, `images_dir`, `captions_file`)
    sent through FiftyOne's operator execution reach nothing: no folder outside the App root is
    written or deleted, and the adapter is trained from the view into the registry."""
    import fiftyone.operators as foo

    from fiftyone_blip import adapters

    root, outside, registry = tmp_path / "app-root", tmp_path / "outside", tmp_path / "registry"
    root.mkdir()
    (outside / "photos").mkdir(parents=True)
    (outside / "photos" / "holiday.txt").write_text("mine")
    monkeypatch.setenv("FIFTYONE_BLIP_APP_ROOT", str(root))
    monkeypatch.setenv(adapters.REGISTRY_ENV, str(registry))
    view = fresh_dataset.limit(8)
    params = dict(
        language="de",
        caption_field="gt_caption_de",
        model="shapes-tiny",
        epochs=1,
        batch_size=8,
        view_target="CURRENT_VIEW",
        # never on the form:
        out=str(outside / "photos"),
        images_dir=str(outside / "no-such-images"),
        captions_file=str(outside / "no-such.jsonl"),
        overwrite=True,
    )
    from fiftyone.operators.delegated import DelegatedOperationService

    uri = "@fiftyone-blip/blip/train_language_adapter"
    foo.execute_operator(uri, ctx=dict(view=view, params=params), request_delegation=True).raise_exceptions()
    service = DelegatedOperationService()
    (queued,) = service.list_operations(dataset_name=fresh_dataset.name, run_state="queued", operator=uri)
    service.execute_queued_operations(dataset_name=fresh_dataset.name)
    done = service.get(queued.id)
    assert done.run_state == "completed", done.result
    assert done.result.result["path"] == str(registry / "de")
    assert sorted(p.name for p in outside.rglob("*")) == ["holiday.txt", "photos"]
    assert (outside / "photos" / "holiday.txt").read_text() == "mine"
    assert sum(adapters.read_manifest(registry / "de")["data"].values()) == 8  # the view's pairs
