"""Caption constraints on the bundled shapes-tiny captioner: banned words, forced words, stop strings.

Each is compared with the unconstrained captions of the same images: a
constraint changes a caption only where it binds.
"""

import math
import re

import pytest
from app_forms import form_errors, form_inputs
from click.testing import CliRunner

import fiftyone_blip
from fiftyone_blip.captions import Captioner, CaptionSettings
from fiftyone_blip.shapes import data as shapes


@pytest.fixture(scope="module")
def loaded():
    from fiftyone_blip.models import load_model

    return load_model("shapes-tiny", task="caption", device="cpu")


@pytest.fixture(scope="module")
def pixels(loaded):
    from fiftyone_blip.shapes.train import pixel_tensor

    return pixel_tensor(loaded.processor, shapes.make_scenes(16, "test"))


def _captions(loaded, pixels, **settings):
    return [row["caption"] for row in Captioner(loaded, CaptionSettings(**settings))(pixels)]


@pytest.fixture(scope="module")
def unconstrained(loaded, pixels):
    return {strategy: _captions(loaded, pixels, strategy=strategy) for strategy in ("greedy", "beam", "diverse-beam")}


@pytest.mark.parametrize("strategy", ["greedy", "beam"])
def test_a_banned_word_never_appears(loaded, pixels, unconstrained, strategy):
    base = unconstrained[strategy]
    assert sum("red" in c.split() for c in base) >= 3  # the constraint binds somewhere
    banned = _captions(loaded, pixels, strategy=strategy, ban_words="red, at the top")
    assert not any("red" in c.split() or "at the top" in c for c in banned)
    # where neither would be written anyway, the caption is the same
    free = [i for i, c in enumerate(base) if "red" not in c.split() and "at the top" not in c]
    assert free and all(banned[i] == base[i] for i in free)


@pytest.mark.parametrize("strategy", ["greedy", "beam", "diverse-beam"])
def test_a_forced_word_always_appears(loaded, pixels, unconstrained, strategy):
    base = unconstrained[strategy]
    assert sum("star" not in c.split() for c in base) >= 3
    forced = _captions(loaded, pixels, strategy=strategy, force_words=["star"])
    assert all("star" in c.split() for c in forced), forced
    held = [i for i, c in enumerate(base) if "star" in c.split()]
    assert held and all(forced[i] == base[i] for i in held)
    if strategy == "diverse-beam":
        return  # (its groups are beam searches: the phrase is checked there, at half the time)
    # a phrase of several tokens, with a word
    both = _captions(loaded, pixels, strategy=strategy, force_words="diamond, on the left")
    assert all("on the left" in c and "diamond" in c.split() for c in both), both


@pytest.mark.parametrize("strategy", ["greedy", "beam"])
def test_a_forced_word_takes_the_place_the_model_scores_best(loaded, pixels, unconstrained, strategy):
    """Where "star" binds, it replaces a kind inside the caption ("a orange star on the right"),
    instead of being tacked on after a finished caption ("... a orange diamond on the right star on the right")."""
    base = unconstrained[strategy]
    bound = [i for i, c in enumerate(base) if "star" not in c.split()]
    assert len(bound) >= 3 and all(shapes.is_english_caption(base[i]) for i in bound)
    rows = Captioner(loaded, CaptionSettings(strategy=strategy, force_words="star"))(pixels)
    placed = [rows[i]["caption"] for i in bound]
    assert all(shapes.is_english_caption(c) and "star" in c.split() for c in placed), placed
    # one kind changed, the rest of the caption kept: as many words, all but one the same
    for i, caption in zip(bound, placed):
        before, after = base[i].split(), caption.split()
        assert len(after) == len(before) and sum(a != b for a, b in zip(after, before)) == 1, (base[i], caption)
    assert all(0 < rows[i]["confidence"] <= 1 for i in bound)


def test_skipping_hopeless_boundaries_chooses_as_trying_them_all(loaded, pixels, monkeypatch):
    settings = CaptionSettings(force_words="circle, on the left")
    pruned = Captioner(loaded, settings)(pixels)
    tried = []
    search = Captioner(loaded, settings)
    real = search._generate

    def generate(*args, **kwargs):
        tried.append(kwargs.get("prefix") is not None)
        return real(*args, **kwargs)

    monkeypatch.setattr(search, "_generate", generate)
    monkeypatch.setattr(search, "_cut_bounds", lambda embeds, rows, token: [[math.inf] * (len(r) + 1) for r in rows])
    everything = search(pixels)  # no bound can be beaten: every boundary is decoded
    assert [r["caption"] for r in everything] == [r["caption"] for r in pruned]
    assert [r["confidence"] for r in everything] == pytest.approx([r["confidence"] for r in pruned], abs=1e-5)
    assert sum(tried) > 20  # the exhaustive search did decode many boundaries


def test_a_forced_word_fits_captions_that_fill_their_room(loaded, pixels):
    """Captions cut at `max_new_tokens` still get the word, also where it takes the last free tokens."""
    rows = Captioner(loaded, CaptionSettings(force_words="star", max_new_tokens=4))(pixels)
    tokenizer = loaded.processor.tokenizer
    for row in rows:
        assert "star" in row["caption"].split() and len(tokenizer(row["caption"])["input_ids"]) - 2 <= 4, row


def test_forced_words_in_sampled_captions(loaded, pixels):
    sampled = _captions(loaded, pixels, strategy="sample", seed=3, force_words="circle")
    assert all("circle" in c.split() for c in sampled)


@pytest.mark.parametrize("strategy", ["greedy"])
def test_stop_strings_cut(loaded, pixels, unconstrained, strategy):
    base = unconstrained[strategy]
    cut = _captions(loaded, pixels, strategy=strategy, stop_strings=", | and")
    for before, after in zip(base, cut):
        ends = [before.find(s) for s in (",", " and") if s in before]
        assert after == (before[: min(ends)].strip() if ends else before)
    assert sum(a != b for a, b in zip(base, cut)) >= 5  # they bind


@pytest.mark.parametrize(
    "settings, message",
    [
        (dict(ban_words="red,,blue"), "`ban_words` must not hold an empty text"),
        (dict(force_words=["star", " "]), "`force_words` must not hold an empty text"),
        (dict(stop_strings="and|"), "`stop_strings` must not hold an empty text"),
        (dict(ban_words="red", force_words="Red"), "`force_words` and `ban_words` both hold 'red'"),
        (dict(force_words="star", stop_strings="and"), "`stop_strings` cannot be combined with `force_words`"),
        # issue 24, part 2, item 9: a forced phrase holding a banned word (every caption held the banned word)
        (dict(force_words="red circle", ban_words="circle"), "`force_words`: 'red circle' holds the banned 'circle'"),
        (dict(force_words="a big Red Circle", ban_words="red circle"), "holds the banned 'red circle'"),
        (dict(ban_words=3), "`ban_words` must be a list of texts"),
    ],
)
def test_bad_constraints_are_refused(settings, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        CaptionSettings(**settings)


def test_words_the_model_cannot_write_are_refused(loaded):
    with pytest.raises(ValueError, match=re.escape("`ban_words`: 'arafed' is not in the model's vocabulary")):
        Captioner(loaded, CaptionSettings(ban_words="arafed"))
    with pytest.raises(ValueError, match=re.escape("`force_words`: 'a dog' is not in the model's vocabulary")):
        Captioner(loaded, CaptionSettings(force_words="a dog"))
    with pytest.raises(ValueError, match=re.escape("`force_words` need 6 tokens; a caption here holds at most 4")):
        Captioner(loaded, CaptionSettings(force_words="at the top, on the left", max_new_tokens=4))


def test_constraints_are_in_the_fingerprint_only_when_set():
    plain = CaptionSettings().as_dict()
    assert not {"ban_words", "force_words", "stop_strings"} & set(plain)  # earlier runs keep their fingerprint
    assert CaptionSettings(ban_words=[]).as_dict() == plain
    constrained = CaptionSettings(ban_words="red", force_words=["star"], stop_strings=None).as_dict()
    assert constrained["ban_words"] == ["red"] and constrained["force_words"] == ["star"]
    # the CLI's and the form's one text equals the SDK's list
    assert CaptionSettings(ban_words="red , blue") == CaptionSettings(ban_words=["red", "blue"])
    # a stop string of the SDK's list keeps its spaces; the parts of one text do not
    assert CaptionSettings(stop_strings=[" and ", ","]).stop_strings == (" and ", ",")
    assert CaptionSettings(stop_strings=" and | , ").stop_strings == ("and", ",")


def test_sdk_records_constraints_and_refuses_another_into_the_same_field(fresh_dataset):
    view = fresh_dataset.limit(8)
    summary = fiftyone_blip.caption(view, model="shapes-tiny", ban_words="red", progress=False)
    assert summary.done == 8
    assert not any("red" in c.split() for c in fresh_dataset.exists("caption").values("caption"))
    [record] = [r for r in fiftyone_blip.runs(fresh_dataset) if r["capability"] == "caption"]
    assert record["settings"]["ban_words"] == ["red"]
    again = fiftyone_blip.caption(view, model="shapes-tiny", ban_words=["red"], progress=False)
    assert (again.done, again.skipped) == (0, 8)
    with pytest.raises(ValueError, match="overwrite"):
        fiftyone_blip.caption(view, model="shapes-tiny", ban_words="blue", progress=False)
    with pytest.raises(ValueError, match="not in the model's vocabulary"):
        fiftyone_blip.caption(fresh_dataset, model="shapes-tiny", field="other", ban_words="arafed", progress=False)
    assert "other" not in fresh_dataset.get_field_schema()


def test_a_forced_run_counts_the_captions_it_rewrote(fresh_dataset):
    """The summary and the run's record count the captions the forced word rewrote (the model's own caption
    lacked it; each is marked in `caption_forced`) and, for shapes-tiny, the captions out of the shapes form."""
    view = fresh_dataset.limit(16)
    fiftyone_blip.caption(view, model="shapes-tiny", field="plain", progress=False)
    summary = fiftyone_blip.caption(view, model="shapes-tiny", force_words="star", progress=False)
    plain, forced, marks = view.values(["plain", "caption", "caption_forced"])
    lacked = ["star" not in caption.split() for caption in plain]
    assert sum(lacked) >= 3 and marks == lacked
    assert all(after == before for after, before, lack in zip(forced, plain, lacked) if not lack)
    assert summary.rewritten == sum(lacked) and summary.done == 16
    assert summary.off_form == sum(not shapes.is_english_caption(caption) for caption in forced)
    assert f"{sum(lacked)} rewritten by the forced words" in str(summary)
    [record] = [r for r in fiftyone_blip.runs(fresh_dataset) if r["field"] == "caption"]
    assert (record["forced_rewritten"], record["off_form"]) == (summary.rewritten, summary.off_form)
    # a run without forced words takes the marks away with the captions they marked
    again = fiftyone_blip.caption(view, model="shapes-tiny", overwrite=True, progress=False)
    assert not hasattr(again, "rewritten") and view.count("caption_forced") == 0


def test_cli_constraints_and_one_line_errors(fresh_dataset):
    from fiftyone_blip.cli import main

    def invoke(*args):
        return CliRunner().invoke(main, ["caption", fresh_dataset.name, "-m", "shapes-tiny", "-q", *args])

    fresh_dataset.save_view("first-six", fresh_dataset.limit(6))
    result = invoke("--view", "first-six", "--force-words", "star", "-f", "forced")
    assert result.exit_code == 0, result.output
    assert all("star" in c.split() for c in fresh_dataset.exists("forced").values("forced"))
    result = invoke("--view", "first-six", "--stop-strings", ",|and", "-f", "short")
    assert result.exit_code == 0, result.output
    assert not any("," in c or " and " in c for c in fresh_dataset.exists("short").values("short"))
    for args, message in [
        (("--ban-words", "red,,blue"), "Error: `ban_words` must not hold an empty text"),
        (("--ban-words", "arafed"), "Error: `ban_words`: 'arafed' is not in the model's vocabulary"),
        (("--ban-words", "star", "--force-words", "star"), "Error: `force_words` and `ban_words` both hold 'star'"),
    ]:
        result = invoke(*args, "-f", "bad")
        assert result.exit_code == 1 and result.output.strip().startswith(message), result.output
        assert len(result.output.strip().splitlines()) == 1
    assert "bad" not in fresh_dataset.get_field_schema()


def test_form_offers_constraints_as_advanced_and_flags_them_at_their_inputs(fresh_dataset, plugin_installed):
    import fiftyone.operators as foo
    from fiftyone.operators.executor import ExecutionContext

    def form(params):
        ctx = ExecutionContext(request_params=dict(dataset_name=fresh_dataset.name, params=params))
        resolved = foo.get_operator("@fiftyone-blip/blip/caption_samples").resolve_input(ctx)
        return resolved.type.properties, form_inputs(resolved), form_errors(resolved)

    def errors_of(advanced):  # as the App sends them: nested in the collapsed section
        return form({"advanced": advanced})[2]

    top, properties, errors = form({})
    assert errors == {}
    for name in ("ban_words", "force_words", "stop_strings"):
        assert name in properties and name not in top and CaptionSettings.declared(name).metadata["advanced"]
    errors = errors_of({"ban_words": "red,,blue"})
    assert errors == {"ban_words": "Words to ban must not hold an empty text, got 'red,,blue'"}
    errors = errors_of({"force_words": "arafed"})
    assert errors == {
        "force_words": "Words that must appear: 'arafed' is not in the model's vocabulary (it would be "
        "written as [UNK])"
    }
    errors = errors_of({"ban_words": "star", "force_words": "star"})
    assert "force_words" in errors and "both hold 'star'" in errors["force_words"]


def test_the_form_says_what_forcing_words_costs(fresh_dataset, plugin_installed):
    import fiftyone.operators as foo
    from fiftyone.operators.executor import ExecutionContext

    def notices(params):
        ctx = ExecutionContext(request_params=dict(dataset_name=fresh_dataset.name, params=params))
        resolved = foo.get_operator("@fiftyone-blip/blip/caption_samples").resolve_input(ctx)
        return [p.view.label for name, p in resolved.type.properties.items() if name == "force_words_notice"]

    assert notices({}) == [] and notices({"advanced": {"force_words": ""}}) == []
    [notice] = notices({"field": "forced", "advanced": {"force_words": "star"}})
    assert "rewrite captions" in notice and "3 to 4 times as long" in notice and "'forced_forced'" in notice


def test_a_banned_phrase_may_hold_a_forced_word():
    # the reverse is fine: a caption can hold "circle" without "red circle"; no word is a prefix match
    CaptionSettings(force_words="circle", ban_words="red circle")
    CaptionSettings(force_words="reddish circle", ban_words="red")
