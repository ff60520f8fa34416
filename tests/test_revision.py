"""`revision=`: a Hugging Face hub revision reaches every `from_pretrained` and the run's fingerprint.

The hub is unreachable here, so the loaders are wrapped: they record their
keyword arguments and load the bundled model's folder for the hub ids
`hub-test/captioner` and `hub-test/matcher`. A bundled or local model with a
`revision` is refused (it would be ignored at load, yet recorded).
"""

import pytest
from click.testing import CliRunner

CAPTIONER, MATCHER = "hub-test/captioner", "hub-test/matcher"


@pytest.fixture
def recorded_loads(monkeypatch):
    """(class name, revision) of every `from_pretrained` call of the BLIP model and processor classes;
    the hub ids `hub-test/*` load the bundled folder of that name."""
    import json

    import transformers

    from fiftyone_blip import models

    def hub_config(name, revision, unreachable=False):
        folder = models.BUNDLED_DIR / name.split("/")[1]
        return json.loads((folder / "config.json").read_text()), revision  # as if a commit

    monkeypatch.setattr(models, "_hub_config", hub_config)
    monkeypatch.setattr(models, "hub_unreachable", lambda: False)  # the wrapped loaders stand for the hub
    calls = []
    for name in ("BlipForConditionalGeneration", "BlipForImageTextRetrieval", "BlipProcessor"):
        cls = getattr(transformers, name)
        original = cls.from_pretrained.__func__

        def wrapped(klass, source, *args, _name=name, _original=original, **kwargs):
            calls.append((_name, kwargs.get("revision", "<not passed>")))
            if str(source).startswith("hub-test/"):
                source = models.BUNDLED_DIR / str(source).split("/")[1]
            return _original(klass, source, *args, **kwargs)

        monkeypatch.setattr(cls, "from_pretrained", classmethod(wrapped))
    return calls


def test_revision_reaches_every_loader_and_the_fingerprint(fresh_dataset, recorded_loads):
    import fiftyone_blip as fob

    view = fresh_dataset.limit(3)
    first = fob.caption(view, model=CAPTIONER, device="cpu", revision="rev-a1", progress=False)
    assert first.done == 3
    assert ("BlipForConditionalGeneration", "rev-a1") in recorded_loads
    assert ("BlipProcessor", "rev-a1") in recorded_loads
    record = fob.runs(fresh_dataset)[-1]
    assert record["revision"] == "rev-a1"
    stamps = set(view.values("caption_run"))

    # another revision is another model: its results are not taken for these
    with pytest.raises(ValueError, match="not written by fiftyone-blip with this model"):
        fob.caption(view, model=CAPTIONER, device="cpu", revision="rev-b2", progress=False)
    again = fob.caption(view, model=CAPTIONER, device="cpu", revision="rev-b2", overwrite=True, progress=False)
    assert again.done == 3 and again.skipped == 0
    assert ("BlipForConditionalGeneration", "rev-b2") in recorded_loads
    assert fob.runs(fresh_dataset)[-1]["revision"] == "rev-b2"
    assert fob.runs(fresh_dataset)[-1]["fingerprint"] != record["fingerprint"]
    assert set(view.values("caption_run")).isdisjoint(stamps)


def test_revision_reaches_matching_heatmaps_and_the_adapter_base(fresh_dataset, recorded_loads):
    import fiftyone_blip as fob

    view = fresh_dataset.limit(2)
    fob.embed(view, model=MATCHER, device="cpu", revision="rev-m1", brain_key=None, progress=False)
    assert ("BlipForImageTextRetrieval", "rev-m1") in recorded_loads
    assert fob.runs(fresh_dataset)[-1]["revision"] == "rev-m1"
    fob.heatmaps(view, model=CAPTIONER, device="cpu", revision="rev-h1", text="a red circle", progress=False)
    assert ("BlipForConditionalGeneration", "rev-h1") in recorded_loads


def test_cli_revision(fresh_dataset, recorded_loads):
    import fiftyone_blip as fob
    from fiftyone_blip.cli import main

    result = CliRunner().invoke(
        main,
        ["caption", fresh_dataset.name, "--model", CAPTIONER, "--device", "cpu", "--revision", "rev-c1", "-q"],
    )
    assert result.exit_code == 0, result.output
    assert ("BlipForConditionalGeneration", "rev-c1") in recorded_loads
    assert fob.runs(fresh_dataset)[-1]["revision"] == "rev-c1"


def test_bad_revision_is_refused_before_any_work(fresh_dataset):
    import fiftyone_blip as fob

    with pytest.raises(ValueError, match="`revision` must be a branch, tag or commit name"):
        fob.caption(fresh_dataset, model="shapes-tiny", revision="two words", progress=False)
    assert "caption" not in fresh_dataset.get_field_schema()


def test_revision_of_a_bundled_or_local_model_is_refused_before_loading(fresh_dataset, recorded_loads, tmp_path):
    """Issue 24, part 2, item 7: transformers ignores `revision` for a folder; it was recorded in the
    run record, field info and fingerprint all the same, and the same weights without it were then
    refused. It is refused in one line before anything loads or is written."""
    import shutil

    import fiftyone_blip as fob
    from fiftyone_blip import models
    from fiftyone_blip.cli import main

    local = tmp_path / "captioner"
    shutil.copytree(models.BUNDLED["shapes-tiny"]["caption"], local)
    view = fresh_dataset.limit(2)
    for model in ("shapes-tiny", str(local)):
        with pytest.raises(ValueError, match="`revision` applies to hub models only") as error:
            fob.caption(view, model=model, revision="v1", progress=False)
        assert "\n" not in str(error.value)
    with pytest.raises(ValueError, match="applies to hub models only"):
        fob.embed(view, model="shapes-tiny", revision="v1", brain_key=None, progress=False)
    result = CliRunner().invoke(main, ["caption", fresh_dataset.name, "-m", "shapes-tiny", "--revision", "v1", "-q"])
    assert result.exit_code == 1 and "applies to hub models only" in result.output
    assert recorded_loads == [] and "caption" not in fresh_dataset.get_field_schema()
    assert fob.runs(fresh_dataset) == []


def test_the_forms_flag_a_revision_of_the_bundled_model(fresh_dataset, plugin_installed):
    import fiftyone.operators as foo
    from app_forms import form_errors
    from fiftyone.operators.executor import ExecutionContext

    for name in ("caption_samples", "compute_heatmaps", "compute_embeddings", "ask_question"):
        operator = foo.get_operator(f"@fiftyone-blip/blip/{name}")
        params = dict(model="shapes-tiny", revision="v1", question="how many shapes are there?")
        ctx = ExecutionContext(request_params=dict(dataset_name=fresh_dataset.name, params=params))
        errors = form_errors(operator.resolve_input(ctx))
        assert "applies to hub models only" in errors.get("revision", ""), (name, errors)
