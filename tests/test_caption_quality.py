"""Caption quality: several captions per image, CapFilt, and caption evaluation (SDK, CLI, operators)."""

import pytest
from click.testing import CliRunner

import fiftyone_blip
from fiftyone_blip import caption_metrics
from fiftyone_blip.caption_filter import CapFiltSettings, choose
from fiftyone_blip.captions import CaptionSettings

# Fixed examples and pycocoevalcap 1.2's scores of them (Bleu(4), Rouge(), Cider() on the tokens of
# `caption_metrics.tokenize`), computed once with the toolkit installed; the library must match them.
PREDICTIONS = [
    "A red circle at the top left.",
    "a blue square in the center",
    "two dogs, playing on grass!",
    "a cat",
    "a yellow star at the bottom and a green diamond on the right",
]
REFERENCES = [
    ["a red circle at the top left"],
    ["a blue square in the centre", "A blue box in the center."],
    ["Two dogs playing in the grass.", "dogs play on a lawn", "two puppies playing outside"],
    ["a black cat sitting on a sofa", "a cat on a couch"],
    ["a yellow star at the bottom and a green diamond on the right"],
]
CORPUS = {
    "bleu1": 0.9131007162269231,
    "bleu2": 0.8798858665273788,
    "bleu3": 0.8642132924101832,
    "bleu4": 0.8393381681124765,
    "rouge_l": 0.8158621275872328,
    "cider": 5.869033305473307,
}
PER_IMAGE = [
    {
        "bleu1": 0.9999999997142859,
        "bleu2": 0.9999999997023811,
        "bleu3": 0.9999999996873018,
        "bleu4": 0.9999999996672622,
        "rouge_l": 1.0,
        "cider": 10.0,
    },
    {
        "bleu1": 0.9999999996666668,
        "bleu2": 0.9999999996500001,
        "bleu3": 0.999999999627778,
        "bleu4": 0.9036020032446392,
        "rouge_l": 0.8333333333333334,
        "cider": 5.468354174569602,
    },
    {
        "bleu1": 0.9999999996000004,
        "bleu2": 0.7071067808860275,
        "bleu3": 0.5503212078953457,
        "bleu4": 9.55442791706741e-05,
        "rouge_l": 0.7155425219941348,
        "cider": 2.0744835054551944,
    },
    {
        "bleu1": 0.22313015992530005,
        "bleu2": 0.22313015986951756,
        "bleu3": 0.002231301599253001,
        "bleu4": 0.00022313015995319128,
        "rouge_l": 0.5304347826086957,
        "cider": 1.8023288473417387,
    },
    {
        "bleu1": 0.9999999998461542,
        "bleu2": 0.999999999842949,
        "bleu3": 0.9999999998393554,
        "bleu4": 0.9999999998352859,
        "rouge_l": 1.0,
        "cider": 10.0,
    },
]


def test_metrics_equal_pycocoevalcap_on_fixed_examples():
    corpus, rows = caption_metrics.score_captions([[p] for p in PREDICTIONS], REFERENCES)
    for name, value in CORPUS.items():
        assert corpus[name] == pytest.approx(value, abs=1e-9), name
    for row, expected in zip(rows, PER_IMAGE):
        for name, value in expected.items():
            assert row[0][name] == pytest.approx(value, abs=1e-9), name


def test_tokenisation_and_several_predictions():
    assert caption_metrics.tokenize("Two dogs, playing on grass!") == "two dogs playing on grass"
    corpus, rows = caption_metrics.score_captions([["a cat", "a black cat"]], [["a black cat"]])
    assert len(rows[0]) == 2 and rows[0][1]["rouge_l"] == 1.0 > rows[0][0]["rouge_l"]
    with pytest.raises(ValueError, match="no image"):
        caption_metrics.score_captions([], [])


def test_num_captions_settings():
    assert CaptionSettings(strategy="beam", num_beams=4, num_captions=4).as_dict()["num_captions"] == 4
    assert "num_captions" not in CaptionSettings().as_dict()  # earlier fingerprints stay valid
    for kwargs, message in [
        (dict(num_captions=2), "at most 1 with strategy 'greedy'"),
        (dict(strategy="beam", num_beams=3, num_captions=4), "at most 3 with strategy 'beam'"),
        (dict(strategy="diverse-beam", num_beams=4, num_captions=3), "num_beam_groups"),
        (dict(strategy="sample", num_captions=11), "from 1 to 10"),
    ]:
        with pytest.raises(ValueError, match=message):
            CaptionSettings(**kwargs)


def test_capfilt_decision():
    assert choose([("a", 0.9)], [("b", 0.99)], 0.7)["origin"] == "original"
    low = choose([("a", 0.1)], [("b", 0.6), ("c", 0.95)], 0.7)
    assert low["caption"] == "c" and low["rejected"] and low["gain"] == pytest.approx(0.85)
    assert choose([("a", 0.1)], [("b", 0.05)], 0.7)["rejected"] is False  # nothing better: kept
    assert choose([], [("b", 0.5)], 0.7)["rejected"] is None
    with pytest.raises(ValueError, match="num_candidates"):
        CapFiltSettings(num_candidates=0)


def test_num_captions_writes_candidates(fresh_dataset):
    view = fresh_dataset.limit(6)
    fiftyone_blip.caption(view, model="shapes-tiny", strategy="beam", num_beams=3, num_captions=3, progress=False)
    for sample in view:
        labels = sample.caption_candidates.classifications
        assert 1 <= len(labels) <= 3 and labels[0].label == sample.caption
        scores = [c.confidence for c in labels]
        assert scores == sorted(scores, reverse=True) and scores[0] == pytest.approx(sample.caption_confidence)
    # another N is another fingerprint: refused without overwrite, nothing changed
    before = view.values("caption_candidates")
    with pytest.raises(ValueError, match="overwrite"):
        fiftyone_blip.caption(view, model="shapes-tiny", strategy="beam", num_beams=3, num_captions=2, progress=False)
    assert view.values("caption_candidates") == before


def _corrupt(dataset, count=8):
    """`noisy`: gt_caption, with the first `count` samples' captions swapped with the next sample's."""
    captions = dataset.values("gt_caption")
    noisy = [captions[(i + 1) % len(captions)] if i < count else c for i, c in enumerate(captions)]
    dataset.set_values("noisy", noisy)
    return [i < count for i in range(len(captions))]


def test_capfilt_sdk(fresh_dataset):
    swapped = _corrupt(fresh_dataset)
    models = dict(caption_model="shapes-tiny", match_model="shapes-tiny", progress=False)
    result = fiftyone_blip.capfilt(fresh_dataset, "noisy", "clean", num_candidates=3, **models)
    assert result["run"].done == len(fresh_dataset)
    rejected = fresh_dataset.values("clean_rejected")
    assert (
        sum(r and s for r, s in zip(rejected, swapped)) >= 7
        and sum(r and not s for r, s in zip(rejected, swapped)) <= 1
    )
    assert fresh_dataset.values("noisy")[0] != fresh_dataset.values("gt_caption")[0]  # the original stays
    kept, truth = fresh_dataset.values("clean"), fresh_dataset.values("gt_caption")
    assert sum(k == t for k, t in zip(kept, truth)) >= 44
    review = fresh_dataset.load_saved_view(result["view"])
    assert len(review) == result["flagged_samples"] == len(fresh_dataset.match_tags("capfilt"))
    gains = review.values("clean_gain")
    assert gains == sorted(gains, reverse=True)
    sample = review.first()
    assert sample.clean_origin == "synthetic" and {c.origin for c in sample.clean_candidates.classifications} == {
        "original",
        "synthetic",
    }
    # another threshold is another result: refused without overwrite, nothing replaced
    with pytest.raises(ValueError, match="overwrite"):
        fiftyone_blip.capfilt(fresh_dataset, "noisy", "clean", num_candidates=3, threshold=0.1, **models)
    assert fresh_dataset.values("clean_rejected") == rejected
    for bad, message in [(dict(out_field="noisy"), "must differ"), (dict(caption_field="nope"), "not a field")]:
        args = {"caption_field": "noisy", "out_field": "x", **bad}
        with pytest.raises(ValueError, match=message):
            fiftyone_blip.capfilt(fresh_dataset, args["caption_field"], args["out_field"], **models)
    assert "x" not in fresh_dataset.get_field_schema()


def test_evaluate_captions_sdk_and_delete(fresh_dataset):
    fresh_dataset.set_values("refs", [[c, c.upper()] for c in fresh_dataset.values("gt_caption")])
    result = fiftyone_blip.evaluate_captions(
        fresh_dataset, "gt_caption", "refs", eval_key="ev", model="shapes-tiny", progress=False
    )
    assert result["corpus"]["bleu4"] == pytest.approx(1.0, abs=1e-6) and result["corpus"]["cider"] > 9
    assert 0 < result["corpus"]["itm"] <= 1 and result["samples"] == len(fresh_dataset)
    record = fiftyone_blip.runs(fresh_dataset)[-1]
    assert record["capability"] == "caption_eval" and record["corpus"]["cider"] == result["corpus"]["cider"]
    # a noisy prediction scores worse and comes first in the review view
    _corrupt(fresh_dataset, count=3)
    result = fiftyone_blip.evaluate_captions(
        fresh_dataset, "noisy", "gt_caption", eval_key="noisy_eval", itm=False, progress=False
    )
    review = fresh_dataset.load_saved_view(result["view"])
    assert set(review.limit(3).values("noisy")) != set(review.skip(3).limit(3).values("noisy"))
    worst = review.values("noisy_eval_cider")
    assert worst == sorted(worst) and worst[0] < worst[-1]
    assert "noisy_eval_itm" not in fresh_dataset.get_field_schema()
    deleted = fiftyone_blip.delete_caption_evaluation(fresh_dataset, "ev")
    assert "ev_cider" in deleted and not any(f.startswith("ev_") for f in fresh_dataset.get_field_schema())
    assert not fresh_dataset.has_saved_view("ev-review")
    with pytest.raises(ValueError, match="no caption evaluation"):
        fiftyone_blip.delete_caption_evaluation(fresh_dataset, "ev")
    with pytest.raises(ValueError, match="not a field"):
        fiftyone_blip.evaluate_captions(fresh_dataset, "nope", "gt_caption", itm=False)


def test_cli(fresh_dataset):
    from fiftyone_blip.cli import main

    _corrupt(fresh_dataset)
    runner = CliRunner()
    out = runner.invoke(
        main,
        [
            "capfilt",
            fresh_dataset.name,
            "noisy",
            "-o",
            "clean",
            "-m",
            "shapes-tiny",
            "--match-model",
            "shapes-tiny",
            "--num-candidates",
            "2",
            "-q",
        ],
    )
    assert out.exit_code == 0, out.output
    assert "rejected the original caption of" in out.output and fresh_dataset.count("clean") == len(fresh_dataset)
    out = runner.invoke(
        main, ["evaluate-captions", fresh_dataset.name, "clean", "gt_caption", "--eval-key", "ev", "--no-itm", "-q"]
    )
    assert out.exit_code == 0, out.output
    assert "CIDEr-D" in out.output and fresh_dataset.count("ev_cider") == len(fresh_dataset)
    out = runner.invoke(main, ["evaluate-captions", fresh_dataset.name, "clean", "gt_objects", "--no-itm"])
    assert out.exit_code == 1 and "Error:" in out.output and len(out.output.strip().splitlines()) == 1
    out = runner.invoke(main, ["delete-caption-evaluation", fresh_dataset.name, "ev"])
    assert out.exit_code == 0 and "ev_cider" not in fresh_dataset.get_field_schema()


def test_operators(fresh_dataset, plugin_installed):
    import fiftyone.operators as foo

    _corrupt(fresh_dataset)
    result = foo.execute_operator(
        "@fiftyone-blip/blip/clean_captions",
        ctx=dict(
            dataset=fresh_dataset,
            params=dict(
                caption_field="noisy",
                out_field="clean",
                caption_model="shapes-tiny",
                match_model="shapes-tiny",
                num_candidates=2,
                view_target="DATASET",
            ),
        ),
    )
    result.raise_exceptions()
    assert fresh_dataset.count("clean") == len(fresh_dataset) and len(fresh_dataset.match_tags("capfilt")) >= 6
    result = foo.execute_operator(
        "@fiftyone-blip/blip/evaluate_captions",
        ctx=dict(
            dataset=fresh_dataset,
            params=dict(
                pred_field="clean", gt_field="gt_caption", eval_key="ev", model="shapes-tiny", view_target="DATASET"
            ),
        ),
    )
    result.raise_exceptions()
    assert fresh_dataset.count("ev_itm") == len(fresh_dataset)


def test_capfilt_and_caption_evaluation_decode_as_fast_decode_says(fresh_dataset, monkeypatch):
    # CapFilt decoded every JPEG at a reduced scale whatever `fast_decode` said, and caption evaluation
    # decoded every pixel; neither put the option in its results' settings
    from fiftyone_blip import images

    small = fresh_dataset.limit(4)
    small.set_values("noisy", small.values("gt_caption"))
    decoded = []
    load_image = images.load_image

    def recording(path, min_size=None):
        decoded.append(min_size)
        return load_image(path, min_size)

    monkeypatch.setattr(images, "load_image", recording)
    models = dict(caption_model="shapes-tiny", match_model="shapes-tiny", num_candidates=2, progress=False)
    fiftyone_blip.capfilt(small, "noisy", "full", **models)
    assert decoded and set(decoded) == {None}
    decoded.clear()
    fiftyone_blip.capfilt(small, "noisy", "fast", fast_decode=True, **models)
    assert decoded and None not in decoded
    assert fiftyone_blip.runs(fresh_dataset)[-1]["settings"]["fast_decode"] is True
    decoded.clear()
    fiftyone_blip.evaluate_captions(small, "noisy", "gt_caption", eval_key="ev", model="shapes-tiny", fast_decode=True)
    assert decoded and None not in decoded
    # another decoding is another result: refused without overwrite
    with pytest.raises(ValueError, match="fast_decode"):
        fiftyone_blip.capfilt(small, "noisy", "fast", **models)
