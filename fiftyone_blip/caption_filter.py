"""CapFilt (`fiftyone_blip.capfilt`; a module named `capfilt` would shadow the SDK function): BLIP's captioner and filter, cleaning the captions a dataset already has.

BLIP bootstrapped its training set this way (Li et al., 2022, section 3.3): the
captioner writes synthetic captions by nucleus sampling, and the image-text
matching head filters out the captions, web or synthetic, that do not match
their image. Here, per image:

1. the existing caption(s) of `caption_field` (a string or a list of strings)
   and `num_candidates` captions sampled by the captioner (nucleus sampling,
   `top_p`) are all scored by the matcher's ITM head (`mislabels.Matcher`);
2. an original caption is rejected when its ITM probability is below
   `threshold` and a synthetic caption matches better; the sample then gets
   the best synthetic caption, else its best original one.

One engine `Task` writes, per sample:

- `{out}`: the kept caption; `{out}_itm`: its ITM probability;
- `{out}_origin`: "original" or "synthetic";
- `{out}_original_itm`: the best original caption's ITM probability (None
  without an original caption);
- `{out}_gain`: how much better the kept caption matches than the best
  original (0 when the original is kept);
- `{out}_rejected`: whether the filter rejected the original caption(s);
- `{out}_candidates`: every caption scored (`fo.Classifications`, best
  first, the ITM probability as confidence and `origin` per caption).

After the run, the samples whose original caption was rejected are tagged
and a review view, sorted by `{out}_gain` (largest first), is saved.

The default threshold was chosen on the validation split of the shapes data
(benchmarks/eval_capfilt.py, BENCHMARKS.md); ITM probabilities are ranking
scores, not calibrated, so another matcher may want another threshold.
"""

from __future__ import annotations

import dataclasses

from fiftyone_blip import fields as schema_fields
from fiftyone_blip import review_views
from fiftyone_blip.captions import MAX_CAPTIONS, MAX_NEW_TOKENS, CaptionSettings
from fiftyone_blip.run_records import run_key
from fiftyone_blip.settings import Settings, setting

# An original caption whose ITM probability is below this is rejected when a synthetic caption
# matches better. Chosen on the validation split of shapes with 30% of the captions replaced
# (another image's caption, or one attribute changed): the cut-off with the best worse-of
# precision and recall of the flags, the lowest of the tied ones (0.7-0.9: 0.993 / 0.953; 0.5: 0.940
# recall on attribute noise; benchmarks/eval_capfilt.py --split validation).
DEFAULT_THRESHOLD = 0.7
ORIGINS = ("original", "synthetic")


@dataclasses.dataclass
class CapFiltSettings(Settings):
    """How `capfilt` writes synthetic captions, filters, and flags."""

    caption_model: str | None = setting(
        None,
        "the captioner: a Hugging Face hub id, a model folder or 'shapes-tiny' (default: "
        "Salesforce/blip-image-captioning-base)",
        cli_flags=("-m",),
        envvar="FIFTYONE_BLIP_CAPTION_MODEL",
    )
    match_model: str | None = setting(
        None,
        "the filter: a BLIP image-text matching model (BlipForImageTextRetrieval), a Hugging Face hub id, a "
        "model folder or 'shapes-tiny' (default: Salesforce/blip-itm-base-coco)",
        envvar="FIFTYONE_BLIP_MATCH_MODEL",
    )
    num_candidates: int = setting(
        5,
        "synthetic captions sampled per image, from 1 to 10",
        label="Synthetic captions per image",
        min=1,
        max=MAX_CAPTIONS,
    )
    top_p: float = setting(
        0.9,
        "sampling: pick each word among the likeliest words that together hold this share of the probability "
        "(above 0, at most 1)",
        min=0,
        max=1,
        min_exclusive=True,
        advanced=True,
    )
    seed: int = setting(0, "sampling seed; the same seed, batch size and order give the same captions", advanced=True)
    max_new_tokens: int = setting(
        30, "at most this many tokens per synthetic caption", min=1, max=MAX_NEW_TOKENS, advanced=True
    )
    threshold: float = setting(
        DEFAULT_THRESHOLD,
        "reject an original caption whose match probability is below this when a synthetic caption matches better",
        label="Reject originals with a match probability below",
        min=0,
        max=1,
    )
    tag: str = setting("capfilt", "the tag of samples whose original caption was rejected")
    view_name: str | None = setting(
        None,
        "the saved review view (default: the kept caption's field name, underscores as dashes, then '-review')",
        advanced=True,
    )

    def __post_init__(self):
        super().__post_init__()
        if not self.tag or not isinstance(self.tag, str):
            raise ValueError(f"`tag` must be a non-empty string, got {self.tag!r}")
        self.sampling()  # the caption settings check themselves

    def sampling(self) -> CaptionSettings:
        """The captioner's settings: nucleus sampling of `num_candidates` captions per image."""
        return CaptionSettings(
            model=self.caption_model,
            strategy="sample",
            num_captions=self.num_candidates,
            top_k=0,
            top_p=self.top_p,
            seed=self.seed,
            max_new_tokens=self.max_new_tokens,
        )

    def as_dict(self) -> dict:
        """What changes results (the fingerprint): the sampling and the threshold."""
        return {"sampling": self.sampling().as_dict(), "threshold": self.threshold}


def original_captions(value) -> list[str]:
    """The existing captions of a sample: a string, or a list of strings (empty ones left out)."""
    if value is None:
        return []
    values = [value] if isinstance(value, str) else list(value) if isinstance(value, (list, tuple)) else None
    if values is None or not all(isinstance(v, str) for v in values):
        raise ValueError(f"a caption must be a string or a list of strings, got {type(value).__name__}")
    return [v.strip() for v in values if v.strip()]


def check_caption_field(samples, caption_field: str) -> None:
    """Refuses a missing field or one that holds neither strings nor lists of strings."""
    import fiftyone as fo

    schema = samples.get_field_schema()
    field = schema.get(caption_field)
    if field is None:
        raise ValueError(f"`caption_field` {caption_field!r} is not a field of the dataset")
    ok = isinstance(field, fo.StringField) or (
        isinstance(field, fo.ListField) and isinstance(field.field, (fo.StringField, type(None)))
    )
    if not ok:
        raise ValueError(
            f"`caption_field` {caption_field!r} holds {type(field).__name__}; CapFilt reads a string "
            "or a list of strings"
        )


def choose(originals: list[tuple[str, float]], synthetic: list[tuple[str, float]], threshold: float) -> dict:
    """The filter's decision for one image from its scored (caption, ITM probability) pairs."""
    best_original = max(originals, key=lambda c: c[1]) if originals else None
    best_synthetic = max(synthetic, key=lambda c: c[1]) if synthetic else None
    if best_original is None:
        kept, origin, rejected = best_synthetic, "synthetic", None
    elif best_synthetic is not None and best_original[1] < threshold and best_synthetic[1] > best_original[1]:
        kept, origin, rejected = best_synthetic, "synthetic", True
    else:
        kept, origin, rejected = best_original, "original", False
    original_itm = best_original[1] if best_original else None
    return {
        "caption": kept[0],
        "itm": kept[1],
        "origin": origin,
        "original_itm": original_itm,
        "gain": None if original_itm is None else kept[1] - original_itm,
        "rejected": rejected,
    }


def capfilt_task(
    captioning,
    matching,
    settings: CapFiltSettings,
    caption_field: str,
    out_field: str,
    resize: str,
    fast_decode: bool = False,
):
    """An engine `Task` that writes synthetic captions, scores them and the originals by ITM, and keeps the best."""
    import fiftyone as fo

    from fiftyone_blip import engine

    names = {key: f"{out_field}_{key}" for key in ("itm", "origin", "original_itm", "gain", "rejected", "candidates")}

    def bind():
        return _capfilt_step(captioning.load(), matching.load(), settings, out_field, (resize, fast_decode), names)

    weights = [loaded.identity.get("weights") for loaded in (captioning, matching)]
    same = captioning.name == matching.name  # a bundled name ("shapes-tiny") names both models
    identity = {
        "model": captioning.name if same else f"{captioning.name} + {matching.name}",
        "revision": matching.revision,
        "dtype": matching.dtype,
        "caption_model": {k: v for k, v in captioning.identity.items() if k != "weights"},
        "match_model": {k: v for k, v in matching.identity.items() if k != "weights"},
    }
    if any(weights):
        identity["weights"] = "|".join(str(w) for w in weights)
    return engine.Task(
        capability="capfilt",
        field=out_field,
        fields={
            out_field: fo.StringField,
            names["itm"]: fo.FloatField,
            names["origin"]: fo.StringField,
            names["original_itm"]: fo.FloatField,
            names["gain"]: fo.FloatField,
            names["rejected"]: fo.BooleanField,
            names["candidates"]: (fo.EmbeddedDocumentField, {"embedded_doc_type": fo.Classifications}),
        },
        settings={**settings.as_dict(), "caption_field": caption_field, "resize": resize, "fast_decode": fast_decode},
        identity=identity,
        bind=bind,
        reads=(caption_field,),
        descriptions={
            out_field: f"the caption CapFilt keeps: the best original of {caption_field!r}, or the best synthetic "
            "one when the filter rejects the originals",
            names["itm"]: f"BLIP ITM probability of {out_field!r}",
            names["origin"]: f"where {out_field!r} comes from: 'original' ({caption_field!r}) or 'synthetic'",
            names["original_itm"]: f"BLIP ITM probability of the best original caption in {caption_field!r}",
            names["gain"]: f"ITM probability of {out_field!r} minus that of the best original caption",
            names["rejected"]: f"whether the filter rejected the original caption(s) of {caption_field!r} "
            f"(ITM probability below {settings.threshold} and a synthetic caption matching better)",
            names["candidates"]: "every caption CapFilt scored, best first: ITM probability as confidence, "
            "'origin' original or synthetic",
        },
    )


def _capfilt_step(captioning, matching, settings: CapFiltSettings, out_field: str, decoding: tuple, names: dict):
    """(prepare, step) of `capfilt_task` on the loaded captioner and matcher; `decoding`: (resize, fast_decode)."""
    import fiftyone as fo
    import torch

    from fiftyone_blip.captions import Captioner
    from fiftyone_blip.images import load_image
    from fiftyone_blip.mislabels import Matcher

    resize, fast_decode = decoding
    caption_pre, match_pre = captioning.preprocessor(resize), matching.preprocessor(resize)
    # one decode serves both models: at a reduced JPEG scale only with fast_decode, as `Preprocessor.pixels`
    min_size = max(caption_pre.size, match_pre.size) if fast_decode else None
    captioner = Captioner(captioning, settings.sampling())
    matcher = Matcher(matching)

    def prepare(path, value):
        image = load_image(path, min_size=min_size)
        return (
            caption_pre.pixels_from_image(image, upright=True)[0],
            match_pre.pixels_from_image(image, upright=True)[0],
            original_captions(value),
        )

    def step(inputs):
        rows = captioner(caption_pre.to_pixel_values([x[0] for x in inputs], captioning.device))
        pairs = []  # (image, caption, origin)
        for n, ((_, _, originals), row) in enumerate(zip(inputs, rows)):
            pairs += [(n, text, "original") for text in dict.fromkeys(originals)]
            synthetic = row.get("candidates") or [(row["caption"], row["confidence"])]
            pairs += [(n, text, "synthetic") for text, _ in synthetic if text]
        with torch.inference_mode(), matching.autocast():
            embeds = matching.image_embeds(match_pre.to_pixel_values([x[1] for x in inputs], matching.device))
            probs = matcher.itm(embeds, [n for n, _, _ in pairs], [text for _, text, _ in pairs])
        out = []
        for n in range(len(inputs)):
            scored = [(text, float(p), origin) for (m, text, origin), p in zip(pairs, probs) if m == n]
            decision = choose(
                [(t, p) for t, p, o in scored if o == "original"],
                [(t, p) for t, p, o in scored if o == "synthetic"],
                settings.threshold,
            )
            ranked = sorted(scored, key=lambda c: -c[1])
            candidates = fo.Classifications(
                classifications=[fo.Classification(label=t, confidence=p, origin=o) for t, p, o in ranked]
            )
            out.append(
                {
                    out_field: decision["caption"],
                    **{names[key]: decision[key] for key in ("itm", "origin", "original_itm", "gain", "rejected")},
                    names["candidates"]: candidates.to_mongo(),
                }
            )
        return out

    return prepare, step


def rejected_ids(samples, out_field: str) -> set:
    """The samples whose original caption the filter rejected, as stored now."""
    from fiftyone import ViewField as F

    rejected = f"{out_field}_rejected"
    if rejected not in samples._dataset.get_field_schema():
        return set()
    return set(samples._dataset.select(samples.values("id")).match(F(rejected) == True).values("id"))  # noqa: E712


def flag(samples, out_field: str, tag: str, view_name: str | None, before=()) -> dict:
    """Tags the samples whose original caption was rejected and saves them as a review view, largest gain first.

    `before`: the samples this field's flags had tagged before the run; only
    their tag may go (a tag this run did not set stays).
    """
    from fiftyone import ViewField as F

    from fiftyone_blip.mislabels import retag

    now = rejected_ids(samples, out_field)
    retag(samples, tag, before, now)
    review = samples._dataset.select(sorted(now)).sort_by(f"{out_field}_gain", reverse=True)
    view_name = view_name or review_views.default_name(out_field)
    review_views.save(samples._dataset, view_name, review, run_key("capfilt", out_field))
    return {
        "flagged_samples": len(review),
        "synthetic_samples": len(samples.match(F(f"{out_field}_origin") == "synthetic")),
        "total_samples": len(samples),
        "tag": tag,
        "view": view_name,
        "field": out_field,
    }


def task_for(samples, caption_field: str, out_field: str, settings: CapFiltSettings, options):
    """The engine `Task` a CapFilt run with these fields and settings would run (its models not loaded)."""
    from fiftyone_blip import models

    schema_fields.check_field_name(out_field)
    check_caption_field(samples, caption_field)
    if out_field == caption_field:
        raise ValueError(f"`out_field` must differ from `caption_field` ({caption_field!r}): originals are kept")
    captioning = models.reference_for(settings.caption_model, "caption", options)
    matching = models.reference_for(settings.match_model, "match", options)
    return capfilt_task(captioning, matching, settings, caption_field, out_field, options.resize, options.fast_decode)


def run(samples, caption_field: str, out_field: str, settings: CapFiltSettings, options) -> dict:
    """CapFilt on `samples`; see `fiftyone_blip.capfilt`."""
    from fiftyone_blip import engine

    task = task_for(samples, caption_field, out_field, settings, options)
    before = rejected_ids(samples, out_field)
    view_name = settings.view_name or review_views.default_name(out_field)
    review_views.check(samples._dataset, view_name, run_key(task.capability, task.field))
    summary = engine.run(samples, task, options)
    return {"run": summary, **flag(samples, out_field, settings.tag, settings.view_name, before)}
