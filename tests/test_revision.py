"""`revision=`: a Hugging Face hub revision reaches every `from_pretrained` and the run's fingerprint.

The hub is unreachable here, so the loaders are wrapped: they record their
keyword arguments and load the bundled local model (transformers ignores
`revision` for a local folder).
"""

import pytest
from click.testing import CliRunner


@pytest.fixture
def recorded_loads(monkeypatch):
    """(class name, revision) of every `from_pretrained` call of the BLIP model and processor classes."""
    import transformers

    calls = []
    for name in ("BlipForConditionalGeneration", "BlipForImageTextRetrieval", "BlipProcessor"):
        cls = getattr(transformers, name)
        original = cls.from_pretrained.__func__

        def wrapped(klass, *args, _name=name, _original=original, **kwargs):
            calls.append((_name, kwargs.get("revision", "<not passed>")))
            return _original(klass, *args, **kwargs)

        monkeypatch.setattr(cls, "from_pretrained", classmethod(wrapped))
    return calls


def test_revision_reaches_every_loader_and_the_fingerprint(fresh_dataset, recorded_loads):
    import fiftyone_blip as fob

    view = fresh_dataset.limit(3)
    first = fob.caption(view, model="shapes-tiny", device="cpu", revision="rev-a1", progress=False)
    assert first.done == 3
    assert ("BlipForConditionalGeneration", "rev-a1") in recorded_loads
    assert ("BlipProcessor", "rev-a1") in recorded_loads
    record = fob.runs(fresh_dataset)[-1]
    assert record["revision"] == "rev-a1"
    stamps = set(view.values("caption_run"))

    # another revision is another model: its results are not taken for these
    with pytest.raises(ValueError, match="not written by fiftyone-blip with this model"):
        fob.caption(view, model="shapes-tiny", device="cpu", revision="rev-b2", progress=False)
    again = fob.caption(view, model="shapes-tiny", device="cpu", revision="rev-b2", overwrite=True, progress=False)
    assert again.done == 3 and again.skipped == 0
    assert ("BlipForConditionalGeneration", "rev-b2") in recorded_loads
    assert fob.runs(fresh_dataset)[-1]["revision"] == "rev-b2"
    assert fob.runs(fresh_dataset)[-1]["fingerprint"] != record["fingerprint"]
    assert set(view.values("caption_run")).isdisjoint(stamps)


def test_revision_reaches_matching_heatmaps_and_the_adapter_base(fresh_dataset, recorded_loads):
    import fiftyone_blip as fob

    view = fresh_dataset.limit(2)
    fob.embed(view, model="shapes-tiny", device="cpu", revision="rev-m1", brain_key=None, progress=False)
    assert ("BlipForImageTextRetrieval", "rev-m1") in recorded_loads
    assert fob.runs(fresh_dataset)[-1]["revision"] == "rev-m1"
    fob.heatmaps(view, model="shapes-tiny", device="cpu", revision="rev-h1", text="a red circle", progress=False)
    assert ("BlipForConditionalGeneration", "rev-h1") in recorded_loads
    # a language run loads its base captioner at the revision, then the adapter onto it
    fob.caption(view, model="shapes-tiny", device="cpu", language="de", revision="rev-l1", progress=False)
    assert ("BlipForConditionalGeneration", "rev-l1") in recorded_loads
    record = fob.runs(fresh_dataset)[-1]
    assert record["revision"] == "rev-l1" and record["language"] == "de"


def test_cli_revision(fresh_dataset, recorded_loads):
    import fiftyone_blip as fob
    from fiftyone_blip.cli import main

    result = CliRunner().invoke(
        main,
        ["caption", fresh_dataset.name, "--model", "shapes-tiny", "--device", "cpu", "--revision", "rev-c1", "-q"],
    )
    assert result.exit_code == 0, result.output
    assert ("BlipForConditionalGeneration", "rev-c1") in recorded_loads
    assert fob.runs(fresh_dataset)[-1]["revision"] == "rev-c1"


def test_bad_revision_is_refused_before_any_work(fresh_dataset):
    import fiftyone_blip as fob

    with pytest.raises(ValueError, match="`revision` must be a branch, tag or commit name"):
        fob.caption(fresh_dataset, model="shapes-tiny", revision="two words", progress=False)
    assert "caption" not in fresh_dataset.get_field_schema()
