"""Caption evaluation against references: COCO-toolkit metrics and BLIP's ITM score side by side.

`run` reads the predictions and references of the collection, computes the
corpus and per-sample BLEU-1..4, ROUGE-L and CIDEr-D (`caption_metrics`:
CIDEr-D's document frequencies need every reference first), then one engine
`Task` writes each sample's scores under the eval key, with the matcher's
ITM probability of its prediction(s) computed in the same pass (the
reference-free score). The corpus figures go into the run's record.

Fields, for eval key `eval`: `eval_bleu1` .. `eval_bleu4`, `eval_rouge_l`,
`eval_cider` (the run's main field: `eval_cider_error` / `eval_cider_run`
are the engine's), `eval_itm`. With several predictions per sample, each
field holds the mean over them.
"""

from __future__ import annotations

import dataclasses

from fiftyone_blip import review_views
from fiftyone_blip.caption_metrics import METRIC_NAMES, METRICS, score_captions
from fiftyone_blip.fields import check_field_name
from fiftyone_blip.settings import Settings, match_model_setting, setting

CAPABILITY = "caption_eval"


@dataclasses.dataclass
class CaptionEvalSettings(Settings):
    """How `evaluate_captions` scores: the matcher for the reference-free ITM score, the review view."""

    model: str | None = match_model_setting("the matching model for the match score: ")
    itm: bool = setting(
        True,
        "also score how well each caption matches its image with BLIP's matching model, without the "
        "references (needs the images and the model)",
        label="Also score how well captions match their images",
        cli_flags=("--no-itm",),
        cli_help="Skip the reference-free ITM score (no model, no images read).",
    )
    view_name: str | None = setting(
        None, "the saved review view, worst CIDEr-D first (default: the evaluation key, then '-review')", advanced=True
    )


def field_names(eval_key: str) -> dict[str, str]:
    """metric -> the sample field that holds it ("cider" -> "eval_cider")."""
    return {name: f"{eval_key}_{name}" for name in (*METRICS, "itm")}


def texts_of(value) -> list[str]:
    """The captions a field value holds: a string, a list of strings, or labels (Classification(s))."""
    if value is None:
        return []
    if isinstance(value, str):
        values = [value]
    elif isinstance(value, (list, tuple)):
        values = list(value)
    elif hasattr(value, "classifications"):
        values = [c.label for c in value.classifications or []]
    elif hasattr(value, "label"):
        values = [value.label]
    else:
        raise ValueError(f"a caption must be text, a list of texts or labels, got {type(value).__name__}")
    return [v.strip() for v in values if isinstance(v, str) and v.strip()]


def check_text_field(samples, name: str, what: str) -> None:
    import fiftyone as fo

    field = samples.get_field_schema().get(name)
    if field is None:
        raise ValueError(f"`{what}` {name!r} is not a field of the dataset")
    ok = (
        isinstance(field, fo.StringField)
        or (isinstance(field, fo.ListField) and isinstance(field.field, (fo.StringField, type(None))))
        or (
            isinstance(field, fo.EmbeddedDocumentField)
            and issubclass(field.document_type, (fo.Classification, fo.Classifications))
        )
    )
    if not ok:
        raise ValueError(
            f"`{what}` {name!r} holds {type(field).__name__}; captions are a string, a list of strings "
            "or Classification(s) labels"
        )


def eval_task(
    model,
    pred_field: str,
    gt_field: str,
    eval_key: str,
    scores: dict,
    corpus_digest: str,
    resize: str,
    fast_decode: bool = False,
):
    """An engine `Task` that writes each sample's precomputed metrics (`scores`, by id) and, with a matcher
    (`model`: a `models.ModelReference` or `LoadedModel`, loaded once the engine's checks pass), the ITM
    probability of its predictions."""
    import fiftyone as fo

    from fiftyone_blip import engine

    names = field_names(eval_key)

    def bind():
        matcher = preprocess = loaded = None
        if model is not None:
            from fiftyone_blip.mislabels import Matcher

            loaded = model.load()
            matcher, preprocess = Matcher(loaded), loaded.preprocessor(resize, fast_decode)

        def prepare(path, predictions, _references, sample_id):
            texts = texts_of(predictions)
            pixels = preprocess.pixels(path)[0] if matcher is not None and texts else None
            return pixels, texts, sample_id

        def step(inputs):
            itm = _mean_itm(loaded, matcher, preprocess, inputs) if matcher is not None else {}
            rows = []
            for n, (_, _, sample_id) in enumerate(inputs):
                values = scores.get(sample_id) or {}
                row = {names[m]: values.get(m) for m in METRICS}
                if matcher is not None:
                    row[names["itm"]] = itm.get(n)
                rows.append(row)
            return rows

        return prepare, step

    fields = {names[m]: fo.FloatField for m in METRICS}
    descriptions = {
        names[m]: f"{METRIC_NAMES[m]} of {pred_field!r} against {gt_field!r} (COCO caption toolkit definition; "
        "the mean over several predictions)"
        for m in METRICS
    }
    if model is not None:
        fields[names["itm"]] = fo.FloatField
        descriptions[names["itm"]] = f"BLIP ITM probability of {pred_field!r} (reference-free; mean over predictions)"
    identity = model.identity if model is not None else {"model": None, "revision": None, "dtype": None}
    return engine.Task(
        capability=CAPABILITY,
        field=names["cider"],
        fields=fields,
        # the per-sample CIDEr-D depends on every reference evaluated: another corpus is another result
        settings={
            "pred_field": pred_field,
            "gt_field": gt_field,
            "itm": model is not None,
            "corpus": corpus_digest,
            **({"resize": resize, "fast_decode": fast_decode} if model is not None else {}),
        },
        identity=identity,
        bind=bind,
        reads=(pred_field, gt_field, "id"),
        descriptions=descriptions,
    )


def _mean_itm(loaded, matcher, preprocess, inputs) -> dict[int, float]:
    """The mean ITM probability of each input's predictions against its image, by input index
    (inputs without pixels, i.e. without predictions, left out)."""
    import torch

    scored = [n for n, (pixels, _texts, _) in enumerate(inputs) if pixels is not None]
    if not scored:
        return {}
    with torch.inference_mode(), loaded.autocast():
        pixels = preprocess.to_pixel_values([inputs[n][0] for n in scored], loaded.device)
        embeds = loaded.image_embeds(pixels)
        pairs = [(i, text) for i, n in enumerate(scored) for text in inputs[n][1]]
        probs = matcher.itm(embeds, [i for i, _ in pairs], [t for _, t in pairs]).tolist()
    itm = {}
    for i, n in enumerate(scored):
        mine = [p for (j, _), p in zip(pairs, probs) if j == i]
        itm[n] = sum(mine) / len(mine)
    return itm


def corpus_texts(samples, pred_field: str, gt_field: str) -> tuple[list, list, list]:
    """(ids, predictions, references) of the samples that hold both; a ValueError where none does."""
    ids, preds, refs = [], [], []
    for sample_id, pred, ref in zip(*samples.values(["id", pred_field, gt_field])):
        p, r = texts_of(pred), texts_of(ref)
        if p and r:
            ids.append(sample_id)
            preds.append(p)
            refs.append(r)
    if not ids:
        raise ValueError(f"no sample has both a prediction in {pred_field!r} and a reference in {gt_field!r}")
    return ids, preds, refs


def corpus_scores(texts: tuple[list, list, list]) -> tuple[dict, dict]:
    """(corpus metrics, per-sample mean metrics by id) of `corpus_texts`."""
    ids, preds, refs = texts
    corpus, rows = score_captions(preds, refs)
    per_sample = {
        sample_id: {m: sum(row[m] for row in image) / len(image) for m in METRICS}
        for sample_id, image in zip(ids, rows)
    }
    return corpus, per_sample


def check_fields(samples, pred_field: str, gt_field: str, eval_key: str) -> None:
    """The fields an evaluation reads hold text, differ, and its key makes valid field names."""
    for name in field_names(eval_key).values():
        check_field_name(name)
    check_text_field(samples, pred_field, "pred_field")
    check_text_field(samples, gt_field, "gt_field")
    if pred_field == gt_field:
        raise ValueError(f"`pred_field` and `gt_field` are both {pred_field!r}")


def task_for(samples, pred_field: str, gt_field: str, eval_key: str, settings, options, texts=None, scores=None):
    """The engine `Task` an evaluation with these fields and settings would run (its model not loaded).

    `texts`: `corpus_texts` (None: read here); `scores`: the per-sample metrics it writes (None: none
    computed, as for the form's preflight, which writes nothing).
    """
    from fiftyone_blip import engine, models

    check_fields(samples, pred_field, gt_field, eval_key)
    texts = corpus_texts(samples, pred_field, gt_field) if texts is None else texts
    model = models.reference_for(settings.model, "match", options) if settings.itm else None
    digest = engine.input_digest(list(texts))
    return eval_task(model, pred_field, gt_field, eval_key, scores or {}, digest, options.resize, options.fast_decode)


def run(samples, pred_field: str, gt_field: str, eval_key: str, settings: CaptionEvalSettings, options) -> dict:
    """Evaluates `samples`; see `fiftyone_blip.evaluate_captions`."""
    from fiftyone_blip import engine
    from fiftyone_blip import run_records as runs

    names = field_names(eval_key)
    check_fields(samples, pred_field, gt_field, eval_key)
    texts = corpus_texts(samples, pred_field, gt_field)
    corpus, per_sample = corpus_scores(texts)
    task = task_for(samples, pred_field, gt_field, eval_key, settings, options, texts, per_sample)
    count = len(texts[0])
    view_name = settings.view_name or review_views.default_name(eval_key)
    review_views.check(samples._dataset, view_name, runs.run_key(CAPABILITY, task.field))
    summary = engine.run(samples, task, options)
    if settings.itm:
        values = [v for v in samples.values(names["itm"]) if v is not None]
        corpus["itm"] = sum(values) / len(values) if values else None
    runs.entry(samples._dataset, CAPABILITY, task.field, summary.run_id).update(
        corpus=corpus, samples_scored=count, pred_field=pred_field, gt_field=gt_field
    )
    from fiftyone import ViewField as F

    review = samples.match(F(names["cider"]) != None).sort_by(names["cider"])  # noqa: E711
    review_views.save(samples._dataset, view_name, review, runs.run_key(CAPABILITY, task.field))
    return {"run": summary, "corpus": corpus, "samples": count, "view": view_name, "eval_key": eval_key}


def delete(samples, eval_key: str) -> list[str]:
    """Deletes an evaluation's run (`run_deletion.delete`: its fields, record and the review views it saved);
    returns the fields deleted."""
    from fiftyone_blip import run_deletion
    from fiftyone_blip import run_records as runs

    dataset = samples._dataset
    key = runs.run_key(CAPABILITY, field_names(eval_key)["cider"])
    if key not in dataset.list_runs():
        raise ValueError(f"no caption evaluation {eval_key!r} on dataset {dataset.name!r}")
    return run_deletion.delete(dataset, key).fields
