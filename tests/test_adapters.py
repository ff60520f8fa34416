"""Language adapters: tokenizer, training (tiny, a few steps), registry, loading, switching, refusals."""

import csv
import json
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

import fiftyone_blip
from fiftyone_blip import adapters, models
from fiftyone_blip.cli import main
from fiftyone_blip.shapes import data as shapes_data
from fiftyone_blip.shapes import write_images

TINY = dict(epochs=1, batch_size=8, max_validation=4, progress=False, log=lambda line: None)


@pytest.fixture(autouse=True)
def registry(tmp_path, monkeypatch):
    """An empty registry folder of each test's own; the bundled adapters stay visible."""
    folder = tmp_path / "registry"
    monkeypatch.setenv(adapters.REGISTRY_ENV, str(folder))
    return folder


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory):
    """24 shapes images with a CSV and a JSONL file of German captions."""
    folder = tmp_path_factory.mktemp("adapter-images")
    scenes = shapes_data.make_scenes(24, "train")
    paths = write_images(scenes, folder / "images")
    rows = [{"image": f"{p.rsplit('/', 1)[1]}", "caption": s.caption("de")} for p, s in zip(paths, scenes)]
    with (folder / "captions.csv").open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=["image", "caption"])
        writer.writeheader()
        writer.writerows(rows)
    (folder / "captions.jsonl").write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in rows) + "\n")
    return folder


def test_tokenizer_keeps_case_accents_and_cyrillic():
    from transformers import BlipProcessor

    base = BlipProcessor.from_pretrained(models.BUNDLED["shapes-tiny"]["caption"]).tokenizer
    assert base.decode(base("Über")["input_ids"], skip_special_tokens=True) != "Über"  # the problem
    captions = [s.caption(lang) for s in shapes_data.make_scenes(200, "train") for lang in ("de", "ru")]
    tokenizer, new_tokens = adapters.build_tokenizer(base, 29, captions + ["Über Über"], max_added_tokens=500)
    assert adapters.roundtrip_rate(tokenizer, captions) == 1.0
    assert tokenizer.decode(tokenizer("Über, ein grünes Quadrat")["input_ids"], skip_special_tokens=True) == (
        "Über, ein grünes Quadrat"
    )
    assert "Kreis" in new_tokens and "жёлтый" in new_tokens
    assert min(tokenizer.convert_tokens_to_ids(new_tokens)) == 29
    # the base vocabulary keeps its ids: English words are the same tokens
    assert tokenizer.convert_tokens_to_ids("circle") == base.convert_tokens_to_ids("circle")
    # a word seen once is spelt in character tokens, and still round-trips
    tokenizer, new_tokens = adapters.build_tokenizer(base, 29, ["Ärger"], max_added_tokens=50)
    assert "Ärger" not in new_tokens and "##g" in new_tokens
    assert adapters.roundtrip_rate(tokenizer, ["Ärger"]) == 1.0


@pytest.mark.parametrize("name", ["../de", "de/../../x", "/etc", "..", "", "de ", "DE", "de\\x", "~", "de.."])
def test_language_names_cannot_reach_outside_the_registry(name, registry):
    with pytest.raises(adapters.AdapterError, match="language code"):
        adapters.check_language(name)
    with pytest.raises(ValueError):
        fiftyone_blip.caption(None, model="shapes-tiny", language=name)


def test_bundled_adapters_are_small_and_listed():
    manifests = {m["language"]: m for m in fiftyone_blip.list_adapters("shapes-tiny")}
    assert {"de", "ru"} <= set(manifests)
    for manifest in manifests.values():
        assert manifest["parameters"]["ratio"] <= adapters.MAX_SIZE_RATIO
        assert manifest["metrics"]["held_out_exact_match"] >= 0.9
        assert manifest["base_model"]["name"] == "shapes-tiny"
    assert fiftyone_blip.adapter_languages("shapes-tiny")[:1] == ["en"]
    listing = CliRunner().invoke(main, ["adapters", "list"], catch_exceptions=False)
    assert listing.exit_code == 0 and "de " in listing.output and "ru " in listing.output


def test_three_languages_on_the_same_images_in_one_run(fresh_dataset):
    view = fresh_dataset.limit(16)
    models._load.cache_clear()  # English first on a model that never saw an adapter
    fiftyone_blip.caption(view, model="shapes-tiny", field="en_before", progress=False)
    loaded = models.load_model("shapes-tiny")
    assert loaded.model.text_decoder.get_input_embeddings().weight.shape[0] == 29
    fiftyone_blip.caption(view, model="shapes-tiny", field="de", language="de", progress=False)
    fiftyone_blip.caption(view, model="shapes-tiny", field="ru", language="ru", progress=False)
    fiftyone_blip.caption(view, model="shapes-tiny", field="de_again", language="de", progress=False)
    fiftyone_blip.caption(view, model="shapes-tiny", field="en_after", language="en", progress=False)
    assert models.load_model("shapes-tiny") is loaded  # one base model, adapters switched on it
    assert set(adapters.session_for(loaded).manifests) == {"de", "ru"}

    for field, truth in (("de", "gt_caption_de"), ("ru", "gt_caption_ru")):
        predicted, expected = view.values(field), view.values(truth)
        misses = [(p, t) for p, t in zip(predicted, expected) if p != t]
        # a check on 16 fixed images, not the quality figure (about 0.96-0.97 exact match on
        # 1,000 images of unseen seeds, BENCHMARKS.md): the bundled Russian adapter misses 2 here
        assert len(misses) <= 2, misses
    assert view.values("de") == view.values("de_again")
    assert any("ü" in c or "Q" in c for c in view.values("de"))  # case and umlauts survive
    # English is unchanged when no adapter is active
    assert view.values("en_after") == view.values("en_before")
    before, after = view.values("en_before_confidence"), view.values("en_after_confidence")
    assert after == pytest.approx(before, rel=1e-5)
    # each language is its own result for resuming
    records = [r for r in fiftyone_blip.runs(fresh_dataset) if r["field"] in ("de", "ru")]
    assert len({r["fingerprint"] for r in records}) == 2


def test_unknown_language_lists_the_installed_ones(fresh_dataset, registry):
    with pytest.raises(adapters.AdapterError, match=r"'fr'.*installed: en, de, ru"):
        fiftyone_blip.caption(fresh_dataset.limit(2), model="shapes-tiny", language="fr", progress=False)
    result = CliRunner().invoke(
        main, ["caption", fresh_dataset.name, "-m", "shapes-tiny", "--language", "fr", "-q"], catch_exceptions=False
    )
    assert result.exit_code != 0 and "installed: en, de, ru" in result.output


def _copy_bundled(registry, language: str, **manifest_changes):
    target = registry / language
    shutil.copytree(adapters.BUNDLED_ADAPTERS_DIR / "de", target)
    manifest = json.loads((target / adapters.MANIFEST_FILE).read_text())
    manifest["language"] = language
    for key, value in manifest_changes.items():
        manifest[key] = {**manifest[key], **value}
    (target / adapters.MANIFEST_FILE).write_text(json.dumps(manifest))
    return target


def test_adapter_for_another_base_model_is_refused(fresh_dataset, registry):
    _copy_bundled(registry, "fr", base_model={"name": "Salesforce/blip-image-captioning-base", "revision": "abc"})
    with pytest.raises(adapters.AdapterError, match=r"blip-image-captioning-base.*revision abc.*not for 'shapes-tiny'"):
        fiftyone_blip.caption(fresh_dataset.limit(2), model="shapes-tiny", language="fr", progress=False)


def test_adapter_weights_load_from_safetensors_only(fresh_dataset, registry):
    target = _copy_bundled(registry, "it")
    (target / adapters.WEIGHTS_FILE).rename(target / "adapter_model.bin")
    with pytest.raises(adapters.AdapterError, match="safetensors only"):
        fiftyone_blip.caption(fresh_dataset.limit(2), model="shapes-tiny", language="it", progress=False)


def test_train_from_a_dataset_on_a_tiny_random_blip(fresh_dataset, registry, tiny_random_captioner):
    manifest = fiftyone_blip.train_adapter(
        "de", samples=fresh_dataset, caption_field="gt_caption_de", model=str(tiny_random_captioner), rank=2, **TINY
    )
    folder = registry / "de"
    assert manifest["path"] == str(folder)
    for name in (adapters.WEIGHTS_FILE, "adapter_config.json", "tokenizer.json", adapters.MANIFEST_FILE):
        assert (folder / name).is_file()
    assert not list(folder.glob("*.bin"))
    config = json.loads((folder / "adapter_config.json").read_text())
    # LoRA on the text decoder only; the vision model has no adapter weights
    from safetensors.torch import load_file

    keys = list(load_file(folder / adapters.WEIGHTS_FILE))
    assert keys and all(".text_decoder." in k for k in keys)
    assert any("trainable_tokens" in k for k in keys) and config["trainable_token_indices"]
    assert manifest["data"] == {"train_pairs": 44, "held_out_pairs": 4}
    assert manifest["parameters"]["trainable"] == sum(
        t.numel() for t in load_file(folder / adapters.WEIGHTS_FILE).values()
    )
    assert manifest["tokenizer"]["roundtrip_train"] == 1.0
    assert {"held_out_loss", "held_out_exact_match"} <= set(manifest["metrics"])
    assert manifest["base_model"]["name"] == str(tiny_random_captioner)
    # plain peft finds the real base (not an alias) and the tokenizer that sizes its embedding
    assert config["base_model_name_or_path"] == str(tiny_random_captioner)
    card = (folder / "README.md").read_text()
    assert "library_name: peft" in card and "PeftModel.from_pretrained(base" in card and "language: de" in card
    assert str(manifest["metrics"]["held_out_exact_match"]) in card
    from peft import AutoPeftModel

    plain = AutoPeftModel.from_pretrained(str(folder))
    rows = manifest["tokenizer"]["first_added_id"] + manifest["tokenizer"]["added_tokens"]
    assert plain.get_base_model().text_decoder.get_input_embeddings().weight.shape[0] == rows
    # it loads onto the base model and captions (random weights: any text)
    summary = fiftyone_blip.caption(
        fresh_dataset.limit(4), model=str(tiny_random_captioner), language="de", field="c", progress=False
    )
    assert summary.done == 4
    # an existing adapter is not replaced silently
    with pytest.raises(adapters.AdapterError, match="exists"):
        fiftyone_blip.train_adapter(
            "de", samples=fresh_dataset, caption_field="gt_caption_de", model=str(tiny_random_captioner), **TINY
        )


def test_csv_and_jsonl_captions_give_the_same_pairs(image_folder, tmp_path):
    from_csv = adapters.pairs_from_folder(image_folder / "images", image_folder / "captions.csv")
    from_jsonl = adapters.pairs_from_folder(image_folder / "images", image_folder / "captions.jsonl")
    assert from_csv == from_jsonl and len(from_csv) == 24
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"image": "missing.png", "caption": "x"}\n')
    with pytest.raises(adapters.AdapterError, match="does not exist"):
        adapters.pairs_from_folder(image_folder / "images", bad)


def test_cli_trains_from_a_folder_of_images(image_folder, registry, tiny_random_captioner):
    captions = "captions.jsonl"
    result = CliRunner().invoke(
        main,
        [
            "adapters",
            "train",
            "-l",
            "de",
            "--images",
            str(image_folder / "images"),
            "--captions",
            str(image_folder / captions),
            "-m",
            str(tiny_random_captioner),
            "--epochs",
            "1",
            "--batch-size",
            "8",
            "--rank",
            "1",
            "--threads",
            "1",
            "-q",
        ],
        catch_exceptions=False,
    )
    assert result.exit_code == 0, result.output
    assert "adapter 'de' saved to" in result.output and "held-out exact match" in result.output
    manifest = adapters.read_manifest(registry / "de")
    assert manifest["data"]["train_pairs"] + manifest["data"]["held_out_pairs"] == 24


def test_adapter_too_large_is_refused_before_training(fresh_dataset, registry, tiny_random_captioner):
    with pytest.raises(adapters.AdapterError, match=r"of the base model.*limit 5%"):
        fiftyone_blip.train_adapter(
            "de",
            samples=fresh_dataset,
            caption_field="gt_caption_de",
            model=str(tiny_random_captioner),
            rank=64,
            **TINY,
        )


def test_operator_offers_installed_languages_and_captions_in_one(fresh_dataset, plugin_installed):
    import fiftyone.operators as foo
    from fiftyone.operators.executor import ExecutionContext

    uri = "@fiftyone-blip/blip/caption_samples"
    operator = foo.OperatorRegistry().get_operator(uri)
    ctx = ExecutionContext(request_params={"dataset_name": fresh_dataset.name, "params": {"model": "shapes-tiny"}})
    form = operator.resolve_input(ctx)
    choices = [choice.value for choice in form.type.properties["language"].view.choices]
    assert choices[0] == "en" and {"de", "ru"} <= set(choices)
    assert foo.OperatorRegistry().operator_exists("@fiftyone-blip/blip/train_language_adapter")

    view = fresh_dataset.limit(6)
    params = dict(model="shapes-tiny", field="caption_ru", language="ru", view_target="CURRENT_VIEW")
    foo.execute_operator(uri, ctx=dict(view=view, params=params)).raise_exceptions()
    assert view.values("caption_ru") != [None] * 6
    assert sum(a == b for a, b in zip(*view.values(["caption_ru", "gt_caption_ru"]))) >= 4  # 2 misses above


def test_outside_a_language_run_the_model_is_the_base_model():
    # The last adapter used stayed active: a caller using the loaded model directly (the zoo
    # captioner, a benchmark) got German-adapter output decoded as English after a German run.
    import numpy as np
    import torch

    from fiftyone_blip import adapters, captions, models
    from fiftyone_blip.shapes import data

    loaded = models.load_model("shapes-tiny", task="caption", cached=False)
    preprocess = loaded.preprocessor("squash")
    pixels = torch.from_numpy(
        np.stack([preprocess.from_image(data.make_scene(i, "test").render())[0] for i in range(8)])
    )
    english = captions.Captioner(loaded, captions.CaptionSettings())
    before = english(pixels)
    tokenizer, _identity, activate = adapters.prepare(loaded, "de")
    with activate():
        german = captions.Captioner(loaded, captions.CaptionSettings(), tokenizer=tokenizer)(pixels)
    assert german[0]["caption"].startswith("ein")
    assert english(pixels) == before


@pytest.mark.parametrize("language", ["de", "ru"])
def test_plain_peft_loads_a_bundled_adapter_and_captions_as_the_library_does(
    fresh_dataset, language, monkeypatch, tmp_path
):
    """The two documented lines, with no fiftyone-blip code, give the library's own captions."""
    import torch
    from peft import AutoPeftModel, PeftModel
    from transformers import AutoTokenizer, BlipForConditionalGeneration, BlipProcessor

    from fiftyone_blip.images import load_image

    view = fresh_dataset.limit(8)
    fiftyone_blip.caption(view, model="shapes-tiny", language=language, field="library", progress=False)
    # the folder the registry lists (a copy of the package's, naming the base by its absolute path)
    (folder,) = [m["path"] for m in fiftyone_blip.list_adapters("shapes-tiny") if m["language"] == language]
    base_dir = str(models.BUNDLED["shapes-tiny"]["caption"])
    config = json.loads((adapters.BUNDLED_ADAPTERS_DIR / language / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == "fiftyone_blip/shapes/models/captioner"  # not the alias
    listed = json.loads((Path(folder) / "adapter_config.json").read_text())
    assert listed["base_model_name_or_path"] == str(models.BUNDLED["shapes-tiny"]["caption"].resolve())

    base = BlipForConditionalGeneration.from_pretrained(base_dir)
    with pytest.raises(IndexError):  # why the resize line is needed: the new tokens' rows
        PeftModel.from_pretrained(BlipForConditionalGeneration.from_pretrained(base_dir), folder)
    base.resize_token_embeddings(len(AutoTokenizer.from_pretrained(folder)))
    model = PeftModel.from_pretrained(base, folder).eval()

    # the one-line form resolves the base named in adapter_config.json from any working directory
    # (issue 24, part 2, item 14: the package-relative path resolved only from the package's parent)
    monkeypatch.chdir(tmp_path)
    auto = AutoPeftModel.from_pretrained(folder).eval()

    processor = BlipProcessor.from_pretrained(base_dir)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    images = [load_image(path) for path in view.values("filepath")]
    pixels = processor(images=images, return_tensors="pt").pixel_values
    with torch.inference_mode():
        plain = tokenizer.batch_decode(model.generate(pixel_values=pixels, max_new_tokens=30), skip_special_tokens=True)
        one_line = tokenizer.batch_decode(
            auto.generate(pixel_values=pixels, max_new_tokens=30), skip_special_tokens=True
        )
    plain = [c.strip() for c in plain]
    assert plain == view.values("library")
    assert [c.strip() for c in one_line] == plain
    assert any(c != e for c, e in zip(plain, view.values("gt_caption"))), "captions in the adapter's language"


def test_bundled_adapter_folders_carry_a_model_card():
    for language in ("de", "ru"):
        folder = adapters.BUNDLED_ADAPTERS_DIR / language
        manifest = adapters.read_manifest(folder)
        card = (folder / "README.md").read_text()
        assert f"language: {language}" in card and "`shapes-tiny`" in card
        assert f"{manifest['data']['train_pairs']} image-caption pairs" in card
        assert f"| greedy exact match | {manifest['metrics']['held_out_exact_match']} |" in card
        assert "AutoPeftModel.from_pretrained(" in card and "PeftModel.from_pretrained(base" in card


def test_overwrite_replaces_only_an_adapter_folder(image_folder, tmp_path, tiny_random_captioner):
    """Issue 24, part 2, item 2: `adapters train -o DIR --overwrite` refuses any DIR that is not an
    adapter folder (a folder of other files, a file) in one line and leaves it as it was."""
    precious = tmp_path / "photos"
    precious.mkdir()
    (precious / "holiday.txt").write_text("mine")
    a_file = tmp_path / "notes.txt"
    a_file.write_text("mine too")
    for out in (precious, a_file):
        result = CliRunner().invoke(
            main,
            ["adapters", "train", "-l", "de", "--images", str(image_folder / "images"), "--captions",
             str(image_folder / "captions.jsonl"), "-m", str(tiny_random_captioner), "-o", str(out),
             "--overwrite", "-q"],
        )  # fmt: skip
        assert result.exit_code == 1 and "left as it is" in result.output, result.output
        assert len(result.output.strip().splitlines()) == 1
    assert (precious / "holiday.txt").read_text() == "mine" and a_file.read_text() == "mine too"
    # an adapter folder is replaced when asked
    data = dict(images_dir=str(image_folder / "images"), captions_file=str(image_folder / "captions.jsonl"))
    out = tmp_path / "adapter"
    fiftyone_blip.train_adapter("de", model=str(tiny_random_captioner), rank=1, out=str(out), **data, **TINY)
    (out / "stray.txt").write_text("x")
    fiftyone_blip.train_adapter(
        "de", model=str(tiny_random_captioner), rank=1, out=str(out), overwrite=True, **data, **TINY
    )
    assert adapters.read_manifest(out)["language"] == "de" and not (out / "stray.txt").exists()


def test_an_adapter_names_a_bundled_base_by_a_path_that_resolves_anywhere(tmp_path):
    """Issue 24, part 2, item 14: adapters trained on shapes-tiny outside the package name its
    captioner by its absolute path; the package's own adapters folder keeps the package-relative one."""
    from fiftyone_blip.adapters.training import peft_base_reference

    outside = peft_base_reference({"name": "shapes-tiny"}, tmp_path / "de")
    assert outside == str(models.BUNDLED["shapes-tiny"]["caption"].resolve()) and Path(outside).is_absolute()
    inside = peft_base_reference({"name": "shapes-tiny"}, adapters.BUNDLED_ADAPTERS_DIR / "de")
    assert inside == "fiftyone_blip/shapes/models/captioner"
    assert peft_base_reference({"name": "Salesforce/blip-image-captioning-base"}, tmp_path) == (
        "Salesforce/blip-image-captioning-base"
    )
