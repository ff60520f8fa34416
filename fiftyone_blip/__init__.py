"""BLIP for FiftyOne datasets: captions, search, label QA and heatmaps, all on one engine.

    import fiftyone as fo
    import fiftyone_blip as fb

    dataset = fo.load_dataset("my-images")
    summary = fb.caption(dataset, model="Salesforce/blip-image-captioning-base", strategy="beam")
    print(summary)                       # counts and time
    fb.caption(dataset, language="de", field="caption_de")     # with a language adapter
    fb.embed(dataset)                                          # embeddings + similarity index
    fb.search(dataset, "a dog on a beach", k=20)
    fb.find_mislabels(dataset, label_field="ground_truth")     # label QA
    fb.heatmaps(dataset)                                       # where it looked, per word
    fb.ask(dataset, "is it night?", "night", answers=["yes", "no"])   # a question per image
    print(fb.runs(dataset)[-1])         # the run record
    fb.delete_run(dataset, "blip_caption_caption_de")          # its fields, record, files, index

Importing this package is cheap: torch and transformers load on first use.
"""

from __future__ import annotations

__version__ = "0.1.0"

# Settings classes are light (no torch, no FiftyOne): each declares its fields once, with
# default, bounds and help, for the SDK, the CLI and the App forms.
from fiftyone_blip.adapters import AdapterJobSettings, AdapterTrainingSettings  # noqa: E402
from fiftyone_blip.caption_eval import CaptionEvalSettings  # noqa: E402
from fiftyone_blip.caption_filter import CapFiltSettings  # noqa: E402
from fiftyone_blip.captions import CaptionSettings  # noqa: E402
from fiftyone_blip.mislabels import FlagSettings, MislabelSettings  # noqa: E402
from fiftyone_blip.settings import EmbedSettings, RunOptions, SearchSettings, documented  # noqa: E402
from fiftyone_blip.vqa import VqaSettings  # noqa: E402
from fiftyone_blip.word_heatmaps import HeatmapSettings  # noqa: E402

__all__ = [
    "RunOptions",
    "CaptionSettings",
    "CapFiltSettings",
    "CaptionEvalSettings",
    "HeatmapSettings",
    "MislabelSettings",
    "FlagSettings",
    "EmbedSettings",
    "SearchSettings",
    "AdapterTrainingSettings",
    "AdapterJobSettings",
    "VqaSettings",
    "caption",
    "capfilt",
    "evaluate_captions",
    "delete_caption_evaluation",
    "ask",
    "train_adapter",
    "list_adapters",
    "adapter_languages",
    "embed",
    "search",
    "find_mislabels",
    "flag_mislabels",
    "apply_suggestions",
    "undo_suggestions",
    "clear_flags",
    "heatmaps",
    "write_heatmap_overlays",
    "runs",
    "delete_run",
    "load_model",
    "load_shapes_dataset",
    "ModelLoadError",
    "ImageDecodeError",
]


@documented(CaptionSettings, RunOptions)
def caption(samples, settings=None, options=None, **overrides):
    """Captions every image of a dataset or view into a string field.

    Writes `field` (the caption), `{field}_confidence` (geometric mean of the
    token probabilities, 0..1), `{field}_error` (why a sample failed, or None)
    and `{field}_run` (a fingerprint of model and settings). Samples that
    already hold a caption from the same model and settings are skipped unless
    `overwrite` is set, so an interrupted run resumes where it stopped.

        fb.caption(dataset, model="shapes-tiny", strategy="beam", num_beams=5)
        fb.caption(dataset, CaptionSettings(strategy="sample", seed=1), batch_size=32)

    Args:
        samples: a FiftyOne dataset or view; or a patches view
            (`dataset.to_patches(field)`, `to_evaluation_patches`): each
            object's crop is captioned into attributes of its source label
            (`field.detections.caption`, ...; the box grown by `context`).
        settings: a `captions.CaptionSettings` (None: its defaults).
        options: a `RunOptions` (None: its defaults).
        **overrides: any field of either, by name:
        {settings}

    Returns:
        an `engine.RunSummary` (done, failed, skipped, total, seconds).

    Raises:
        ValueError: an invalid setting, before any sample is touched; an
            unknown language (the message lists the installed ones).
        ModelLoadError: the model cannot be loaded.
    """
    from fiftyone_blip import captions

    return captions.run(samples, *captions.CaptionSettings.resolve(settings, options, overrides))


@documented(CapFiltSettings, RunOptions)
def capfilt(samples, caption_field: str, out_field: str = "capfilt", settings=None, options=None, **overrides) -> dict:
    """Cleans the captions in `caption_field` with BLIP's CapFilt: synthetic captions, filtered by ITM.

    Per image, its caption(s) (a string or a list of strings) and
    `num_candidates` captions the captioner samples (nucleus sampling) are
    all scored by the matcher's ITM head. An original caption whose ITM
    probability is below `threshold` is rejected when a synthetic caption
    matches better; the image then gets the best synthetic caption, else its
    best original. `caption_field` is never changed. Writes `out_field` (the
    kept caption), `{out_field}_itm`, `{out_field}_origin` ("original" or
    "synthetic"), `{out_field}_original_itm`, `{out_field}_gain` (ITM gain
    over the best original), `{out_field}_rejected`, `{out_field}_candidates`
    (every scored caption, best first), then tags the samples whose original
    was rejected and saves a review view sorted by gain, largest first.

        fb.capfilt(dataset, "caption", "caption_clean", num_candidates=5)

    Args:
        samples: a FiftyOne dataset or view.
        caption_field: the captions to clean (string or list of strings).
        out_field: the field the kept caption goes to ("capfilt").
        settings: a `caption_filter.CapFiltSettings` (None: its defaults).
        options: a `RunOptions` (None: its defaults).
        **overrides: any field of either, by name:
        {settings}

    Returns:
        a dict: "run" (the engine `RunSummary`), flagged_samples,
        synthetic_samples, total_samples, tag, view, field.

    Raises:
        ValueError: a missing or non-text `caption_field`, `out_field` equal
            to it, another invalid setting, values in the fields that this
            run did not write (without `overwrite`): before any work.
        ModelLoadError: a model cannot be loaded.
    """
    from fiftyone_blip import caption_filter

    settings, options = CapFiltSettings.resolve(settings, options, overrides)
    return caption_filter.run(samples, caption_field, out_field, settings, options)


@documented(CaptionEvalSettings, RunOptions)
def evaluate_captions(
    samples, pred_field: str, gt_field: str, eval_key: str = "eval", settings=None, options=None, **overrides
) -> dict:
    """Scores the captions in `pred_field` against the references in `gt_field`, like the COCO caption toolkit.

    BLEU-1..4, ROUGE-L and CIDEr-D with the definitions of `pycocoevalcap`
    (the tokenisation is this package's own; see `caption_metrics`), per
    sample and for the corpus, and BLIP's reference-free ITM probability of
    each prediction beside them (unless `itm` is False). References and
    predictions may be a string, a list of strings or an `fo.Classifications`
    (e.g. `caption(num_captions=5)`'s `{field}_candidates`); with several
    predictions, a sample's scores are their means. Per sample, writes
    `{eval_key}_bleu1` .. `{eval_key}_bleu4`, `{eval_key}_rouge_l`,
    `{eval_key}_cider`, `{eval_key}_itm`; the corpus figures go into the run
    record (`fb.runs(dataset)`) and the returned dict; a review view
    `{eval_key}-review` lists the samples worst CIDEr-D first. Remove all of
    it with `delete_caption_evaluation`. A sample's CIDEr-D depends on every
    reference evaluated, so a run over other samples, predictions or
    references is another result: refused on the same eval key without
    `overwrite`.

        fb.evaluate_captions(dataset, "caption", "gt_caption", eval_key="eval")

    Args:
        samples: a FiftyOne dataset or view.
        pred_field: the predicted captions.
        gt_field: the reference captions.
        eval_key: the prefix of the fields written ("eval").
        settings: a `caption_eval.CaptionEvalSettings` (None: its defaults).
        options: a `RunOptions` (None: its defaults).
        **overrides: any field of either, by name:
        {settings}

    Returns:
        a dict: "run" (the engine `RunSummary`), "corpus" ({metric: value},
        with "itm" the mean ITM probability), "samples" (how many were
        scored), "view".

    Raises:
        ValueError: a missing field or one that holds no text, no sample with
            both a prediction and a reference, a bad eval key: before any work.
        ModelLoadError: the model cannot be loaded.
    """
    from fiftyone_blip import caption_eval

    settings, options = CaptionEvalSettings.resolve(settings, options, overrides)
    return caption_eval.run(samples, pred_field, gt_field, eval_key, settings, options)


def delete_caption_evaluation(samples, eval_key: str = "eval") -> list[str]:
    """Deletes what `evaluate_captions` wrote under `eval_key`: its fields, run record and review view.

    Returns:
        the deleted field names.
    """
    from fiftyone_blip import caption_eval

    return caption_eval.delete(samples, eval_key)


@documented(VqaSettings, RunOptions)
def ask(samples, questions, fields, answers=None, boolean=False, settings=None, options=None, **overrides):
    """Asks every image of a dataset or view one or several questions, each answer into its own field.

    Each question writes `field`: an `fo.Classification` whose label is the
    normalised answer ("Two." -> "2") and whose confidence is its
    probability, so the App's sidebar filters samples by answer; with
    `boolean`, a yes/no question writes a bool (True for "yes") and
    `{field}_confidence`. The first question's field names `{field}_error`
    and `{field}_run` for the run. The image is encoded once per batch for
    all questions. Samples answered by the same model, questions, answers and
    settings are skipped unless `overwrite` is set, so a run resumes.

        fb.ask(dataset, "how many people are there?", "people", model="Salesforce/blip-vqa-base")
        fb.ask(dataset, ["is it night?", "what colour is the car?"], ["night", "car_colour"],
                answers=[["yes", "no"], None], boolean=[True, False])

    Args:
        samples: a FiftyOne dataset or view; or a patches view: each object's
            crop is asked, the answers go into attributes of its source label.
        questions: a question, or a list of them.
        fields: the field of each question (one name, or a list as long as `questions`).
        answers: None for free generation (the answer decoder writes the
            answer); one list of candidate answers for all questions; or one
            list (or None) per question. With candidates the answer is the one
            the decoder finds most likely, as BLIP's own VQA evaluation ranks
            its answer list; the confidence is its share among them (None).
        boolean: True, or one flag per question: a yes/no question stored as
            a bool (False).
        settings: a `VqaSettings` (None: its defaults).
        options: a `RunOptions` (None: its defaults).
        **overrides: any field of either, by name:
        {settings}

    Returns:
        an `engine.RunSummary` (done, failed, skipped, total, seconds).

    Raises:
        ValueError: an empty question or one longer than the model's text
            positions, empty or duplicate answers, a bad or already used
            field, another invalid setting: before any sample is touched.
        ModelLoadError: the model cannot be loaded.
    """
    from fiftyone_blip import vqa

    settings, options = VqaSettings.resolve(settings, options, overrides)
    return vqa.run(samples, vqa.make_questions(questions, fields, answers, boolean), settings, options)


# --- language adapters (fiftyone_blip.adapters) ---------------------------------------------


@documented(AdapterTrainingSettings, AdapterJobSettings)
def train_adapter(language: str, samples=None, settings=None, job=None, progress=True, log=print, **overrides) -> dict:
    """Trains a LoRA language adapter for captions in `language` and installs it.

    The data is either a FiftyOne dataset or view (`samples`) with captions in
    `caption_field`, or a folder of images (`images_dir`) with a CSV or JSONL
    file of captions (`captions_file`, rows with `image` and `caption`). Only
    the text decoder adapts (LoRA plus new token rows); the vision encoder
    stays frozen. A held-out split gives early stopping and the manifest's
    metrics. The adapter goes to `out`, by default `<registry>/<language>`,
    where the registry is `FIFTYONE_BLIP_ADAPTERS_DIR` or
    ~/.fiftyone-blip/adapters.

    Args:
        language: language code the adapter is installed under ("de").
        samples: a FiftyOne dataset or view (None: use `images_dir`).
        settings: an `adapters.AdapterTrainingSettings` (None: its defaults).
        job: an `adapters.AdapterJobSettings` (None: its defaults).
        progress: True for a progress bar, False for none, or a callable
            `progress(done, total)`.
        log: called with one line per epoch (print).
        **overrides: any field of `settings` or `job`, by name:
        {settings}

    Returns:
        the adapter's manifest (with its `path`).
    """
    from fiftyone_blip import adapters

    training = {k: overrides.pop(k) for k in list(overrides) if k in AdapterTrainingSettings.names()}
    training = AdapterTrainingSettings.resolve(settings, None, training, run_options=False)
    job = AdapterJobSettings.resolve(job, None, overrides, run_options=False)
    return adapters.train(language, samples, training, job, progress=progress, log=log)


def list_adapters(model: str | None = None) -> list[dict]:
    """Manifests of the installed language adapters (registry, then bundled), each with its `path`.

    Args:
        model: only adapters trained for this base model (None: all).
    """
    from fiftyone_blip import adapters

    return adapters.installed_adapters(model)


def adapter_languages(model: str | None = None) -> list[str]:
    """English ("en") plus the languages that installed adapters add to `model` (None: any model)."""
    from fiftyone_blip import adapters

    return adapters.languages(model)


# --- end of language adapters ------------------------------------------------------------------


def runs(dataset) -> list[dict]:
    """Returns the run records of a dataset, oldest first.

    Each record is one engine run: its FiftyOne run key (`run_key`, one per
    capability and field, e.g. "blip_caption_caption_de"), capability, field,
    model (name, path, revision, dtype), settings, shard, host, pid, package
    versions, start and end time, status ("running", "completed", "failed",
    "interrupted") and counts of the samples stored (done, failed) and skipped
    of the total.

    The records live in FiftyOne's run framework: `dataset.list_runs()` shows
    the keys, `dataset.get_run_info(key).config.history` holds the records, and
    they follow the dataset through `clone()`, renames and FiftyOneDataset
    exports. Records of older versions of fiftyone-blip (the
    `fiftyone_blip_runs` collection) move there on first use.
    """
    from fiftyone_blip import engine

    return engine.list_runs(dataset)


def delete_run(samples, key: str, dry_run: bool = False):
    """Deletes a fiftyone-blip run with everything it made: fields, record, map files, index.

    `key` is the run's FiftyOne run key, as `runs()` gives it (`run_key`,
    "blip_{capability}_{field}"). What goes:

    - every field, and every per-label attribute, whose `info` says
      fiftyone-blip wrote it for that capability and main field (the result,
      its companions, `_error` and `_run`); for label QA also the flags
      made from its scores, and their tag where only they had set it; a
      field of the same name that fiftyone-blip did not write stays;
    - heatmap PNGs those fields refer to under a `maps_dir` the run recorded,
      unless another run (on this dataset, a clone or another dataset) refers
      to them too; nothing else on disk;
    - for an embed run, the similarity indexes `embed` built over its
      embeddings (an index built with `compute_similarity` stays);
    - the run record (FiftyOne's `dataset.delete_run(key)`, which alone
      removes only the record).

        fb.delete_run(dataset, "blip_heatmaps_heatmap", dry_run=True).lines()   # what would go
        fb.delete_run(dataset, "blip_heatmaps_heatmap")

    Args:
        samples: a FiftyOne dataset or view (the run of its dataset is deleted).
        key: the run key.
        dry_run: only say what would be deleted (False).

    Returns:
        a `run_deletion.RunDeletion`: fields, map_files, kept_map_files,
        brain_keys; `lines()` for people.

    Raises:
        ValueError: the dataset has no fiftyone-blip run `key`, or a run is
            writing its fields: nothing is deleted.
    """
    from fiftyone_blip import run_deletion

    return run_deletion.delete(samples, key, dry_run=dry_run)


def load_model(
    name: str | None = None,
    task: str = "caption",
    device: str = "auto",
    dtype: str = "auto",
    revision: str | None = None,
):
    """Loads a BLIP model and processor; see `fiftyone_blip.models.load_model`.

    `revision` is a Hugging Face hub branch, tag or commit (None: the default branch).
    """
    from fiftyone_blip import models

    return models.load_model(name, task=task, device=device, dtype=dtype, revision=revision)


def load_shapes_dataset(name: str = "shapes-demo", count: int = 200, split: str = "test", **kwargs):
    """Builds (or loads) a persistent FiftyOne dataset of synthetic shapes images.

    See `fiftyone_blip.shapes.load_dataset`.
    """
    from fiftyone_blip import shapes

    return shapes.load_dataset(name=name, count=count, split=split, **kwargs)


# ---- heatmaps: where the model looked, per caption word ----


@documented(HeatmapSettings, RunOptions)
def heatmaps(samples, settings=None, options=None, **overrides):
    """Computes where BLIP looked for each word of a caption (or any text), per image.

    Writes `field` (an `fo.Heatmap` of the whole text, which the App overlays
    on the image), `{field}_words` (the words; word pieces merged),
    `{field}_maps` (a uint8 array of per-word maps) or, with `maps_dir`,
    `{field}_word_maps` (one `fo.Heatmap` PNG per word), `{field}_text` (the text),
    `{field}_probs` (cross-attention: each word's probability under the
    captioner) or `{field}_match` (gradcam: the ITM match probability), and
    `{field}_error` / `{field}_run`. Every map is mapped back onto the
    original image, whatever the resize mode. With `text_field`, only
    samples that hold a text there are processed; "int8" works for
    cross-attention only.

    Args:
        samples: a FiftyOne dataset or view.
        settings: a `HeatmapSettings` (None: its defaults).
        options: a `RunOptions` (None: its defaults, with batch_size 8).
        **overrides: any field of either, by name:
        {settings}

    Returns:
        an `engine.RunSummary`.

    Raises:
        ValueError: an invalid setting, before any sample is touched.
        ModelLoadError: the model cannot be loaded.
    """
    from fiftyone_blip import word_heatmaps

    return word_heatmaps.run(samples, *HeatmapSettings.resolve(settings, options, overrides))


def write_heatmap_overlays(sample, output_dir: str, field: str = "heatmap", alpha: float = 0.5) -> list:
    """Writes a sample's image with each word's map over it, one PNG per word, for a report.

    Also writes `caption.png` (the whole caption's map). Returns the paths.
    """
    from fiftyone_blip import word_heatmaps as heatmap_module

    return heatmap_module.write_overlays(sample, output_dir, field=field, alpha=alpha)


@documented(EmbedSettings, RunOptions)
def embed(samples, settings=None, options=None, **overrides):
    """Embeds every image in BLIP's contrastive (ITC) space and builds a similarity index.

    Writes `field` (a unit vector: normalized vision_proj of the image's CLS
    token; 256-d for BLIP-base), `{field}_error` and `{field}_run`, on the
    engine (batched, resumable, shardable; a bad file is recorded, not fatal).
    Then builds a FiftyOne brain similarity index `brain_key` over the dataset's
    samples embedded by this model, whose model embeds text prompts and
    reloads by name in later processes, so these work anywhere, at any time::

        dataset.sort_by_similarity("a red circle", k=25, brain_key="blip_sim")
        dataset.sort_by_similarity(sample_id, k=25, brain_key="blip_sim")

    and the App's text and image similarity search uses the index. With the
    default backend "blip" (`fiftyone_blip.similarity_backend`: FiftyOne's
    sklearn storage) a text query is BLIP's ITC shortlist re-ranked by the ITM
    head, as `search(..., rerank=True)`, there and in the App; "sklearn" builds
    FiftyOne's own index (ITC only). Re-running
    resumes the embeddings and rebuilds the index. An existing index of
    `brain_key` built with the same model is replaced; one built with another
    model is an error. No index is built for a shard: when all shards are
    done, run `embed` once without `shard` (it skips what is embedded and
    builds the index). For the "lancedb" backend (``pip install lancedb``),
    set FIFTYONE_BRAIN_SIMILARITY_LANCEDB_URI so later processes find it.

    Args:
        samples: a FiftyOne dataset or view; or a patches view (`to_patches`):
            each object's crop is embedded into an attribute of its source
            label, and the index is a patches index (`patches_field`).
        settings: an `EmbedSettings` (None: its defaults).
        options: a `RunOptions` (None: its defaults).
        **overrides: any field of `settings` or `options`, by name; other
            keywords go to the similarity backend (e.g. `metric="cosine"`,
            `table_name=...` for lancedb):
        {settings}

    Returns:
        an `engine.RunSummary` of the embedding run.

    Raises:
        ValueError: an invalid setting, or a brain key that holds another
            model's index, before any sample is touched.
        ModelLoadError: the model cannot be loaded.
    """
    from fiftyone_blip import embeddings

    known = EmbedSettings.names() | RunOptions.names()
    backend_kwargs = {k: overrides.pop(k) for k in list(overrides) if k not in known}
    settings, options = EmbedSettings.resolve(settings, options, overrides)
    return embeddings.run(samples, settings, options, **backend_kwargs)


@documented(SearchSettings)
def search(samples, query: str, settings=None, score_field: str | None = None, **overrides):
    """The k samples most like a text query (or like a sample, given its id), as a view, best first.

    Text queries are embedded by the index's own model (BLIP's unimodal text
    encoder) and ranked by cosine similarity with the image embeddings. With
    `rerank`, the top `shortlist` are re-scored by BLIP's ITM head, BLIP's own
    retrieval recipe (ITC shortlist, ITM re-score): each is ranked by the ITM
    match logit plus the ITC cosine. The index is one `embed` built, or one
    FiftyOne's `compute_similarity(model="blip-itc-...")` built with a
    fiftyone-blip zoo model.

        view = fb.search(dataset, "a red circle", k=20)                # like sort_by_similarity
        view = fb.search(dataset, "a blue square on the left", k=10, rerank=True, score_field="score")
        view.values("score")                                           # best first

    Args:
        samples: a FiftyOne dataset or view (a view limits the results to it).
        query: a text, or the id of a sample for image-to-image search.
        settings: a `SearchSettings` (None: its defaults).
        score_field: a float field of the dataset that receives each result's
            score, as the brain's `dist_field` (None: no field is written).
            The ITC cosine, or with `rerank` the ITM logit + ITC cosine;
            earlier scores in it are cleared. Only a field that this search
            made can be reused.
        **overrides: any of its fields, by name:
        {settings}

    Returns:
        a `DatasetView` of `samples`: the results, best first.

    Raises:
        ValueError: an empty query, a brain key that does not exist or is
            not an index of a fiftyone-blip model, `k` outside 1 .. the
            number of samples, an index built with another model, or a
            `score_field` this search did not make.
    """
    from fiftyone_blip import embeddings

    settings = SearchSettings.resolve(settings, None, overrides, run_options=False)
    return embeddings.search_view(samples, query, score_field=score_field, **settings.as_dict())


def __getattr__(name):
    # Error types resolve lazily so that `import fiftyone_blip` stays cheap.
    if name == "ModelLoadError":
        from fiftyone_blip.models import ModelLoadError

        return ModelLoadError
    if name == "ImageDecodeError":
        from fiftyone_blip.images import ImageDecodeError

        return ImageDecodeError
    if name == "AdapterError":
        from fiftyone_blip.adapters import AdapterError

        return AdapterError
    raise AttributeError(f"module 'fiftyone_blip' has no attribute {name!r}")


# --- label QA: mislabels by image-text matching ---------------------------------------------------------------


@documented(MislabelSettings, RunOptions)
def find_mislabels(samples, label_field: str, settings=None, options=None, **overrides) -> dict:
    """Scores how well each label fits its image with BLIP's ITM head, then flags likely mislabels.

    What is scored depends on the label field's type:

    - `Classification` / `Classifications`: the ITM probability of
      `template.format(label=...)` (e.g. "a photo of a dog"), and the margin
      against the best other class of the label set (zero-shot over `classes`,
      by default the classes present in `samples`);
    - `Detections`: the same per object, on its crop (the box grown by
      `crop_padding`);
    - a string field (free-text captions, including ones `caption()` wrote:
      a caption self-check): the ITM probability of the text.

    For class labels (with margins, the default) the class of the label set
    that matches best is stored as the suggested label, with its ITM
    probability (`{field}_suggested`, `{field}_suggested_p`, per label and, for
    the sample's least believed label, per sample); `apply_suggestions`
    applies it to flagged labels.

    Stored, so that `flag_mislabels` can re-flag without the model: per label,
    attributes `{field}_itm`, `{field}_margin`, `{field}_itc`; per sample,
    `{field}` (the lowest ITM probability of its labels), `{field}_margin`,
    `{field}_itc`, `{field}_error`, `{field}_run`. Then flags as
    `flag_mislabels` does (default: an ITM probability of at most 0.04,
    i.e. mistakenness >= 0.96).

    Args:
        samples: a FiftyOne dataset or view; or a patches view of
            `label_field`: its objects are scored and flagged (`context`, when
            not 1, is the crop padding).
        label_field: the field to check (Classification, Classifications,
            Detections or string).
        settings: a `mislabels.MislabelSettings` (None: its defaults).
        options: a `RunOptions` (None: its defaults).
        **overrides: any field of either, by name:
        {settings}

    Returns:
        a dict: "run" (the engine `RunSummary`) and the `flag_mislabels`
        summary (method, flagged_samples, flagged_labels, tag, view, ...).

    Raises:
        ValueError: an unsupported label field type, an empty label set, a
            template without {label}, or another invalid setting, before
            any work.
        ModelLoadError: the model cannot be loaded.
    """
    from fiftyone_blip import mislabels

    return mislabels.run(samples, label_field, *MislabelSettings.resolve(settings, options, overrides))


@documented(FlagSettings)
def flag_mislabels(samples, label_field: str, settings=None, **overrides) -> dict:
    """Flags likely mislabels from the scores `find_mislabels` stored; needs no model.

    The mistakenness score (0..1, higher = more likely wrong) of a label is,
    by `method`: "itm": 1 - p; "itc": (1 - cosine) / 2; "itm+margin":
    (2 - p - margin) / 3 ("auto": itm). Without a threshold, percentile or
    top_k, labels with mistakenness >= 0.96 are flagged (an ITM probability
    of at most 0.04: the rule chosen on held-out shapes, see
    benchmarks/eval_flag_rule.py). A sample's score is its worst label's. Writes
    `{field}_mistakenness` and `{field}_flagged` per sample (and per label for
    label fields), re-tags the samples with `tag` (earlier tags in `samples`
    are removed first), and saves a view of the flagged samples, most
    suspicious first, for review in the App.

    Args:
        samples: a FiftyOne dataset or view.
        label_field: the field that was scored.
        settings: a `mislabels.FlagSettings` (None: its defaults).
        **overrides: any of its fields, by name:
        {settings}

    Returns:
        a dict: method, flagged_samples, flagged_labels, scored_samples,
        total_samples, tag, view, score_field, flag_field, suggested_labels
        (flagged labels whose suggested class differs: what
        `apply_suggestions` would change) and suggested_field (None for a
        free-text field or scores without margins).
    """
    from fiftyone_blip import mislabels

    return mislabels.flag_with(samples, label_field, FlagSettings.resolve(settings, None, overrides, run_options=False))


def apply_suggestions(samples, label_field: str, field: str | None = None) -> dict:
    """Applies the suggested class to the flagged labels of `samples`, keeping the old class on the label.

    `find_mislabels` stores, for class labels (`Classification`,
    `Classifications`, `Detections`), the class of the label set that BLIP's
    ITM head matches best (`{field}_suggested`, with its ITM probability
    `{field}_suggested_p`). Each label of `samples` that was flagged and whose
    suggestion differs takes the suggested class; its old class goes in the
    label's `label_before_suggestion` attribute, the class written in
    `suggestion_applied` and the time in `suggestion_applied_at`
    (`undo_suggestions` restores it). A label edited
    since it was scored (it no longer reads as `{field}_scored_label`) is left
    as it is and counted; only the labels of `samples` change (a view of
    selected samples, or the review view `find_mislabels` saved).

    Args:
        samples: a FiftyOne dataset or view.
        label_field: the class-label field that was scored.
        field: where the scores are (None: "{label_field}_match").

    Returns:
        a dict: label_field, field, applied, edited (left alone: changed since
        the run), already_applied.

    Raises:
        ValueError: a free-text field, no suggestions stored (run
            `find_mislabels` first), or a run writing the scores now.
    """
    from fiftyone_blip import label_fixes

    return label_fixes.apply(samples, label_field, field)


def undo_suggestions(samples, label_field: str, field: str | None = None) -> dict:
    """Restores the labels of `samples` that `apply_suggestions` changed, exactly as they were.

    A label that still holds the class applied to it (`suggestion_applied`)
    gets its old class back from `label_before_suggestion`, and the three
    attributes are removed. A label changed again since is left as it is and
    counted. It reads only those attributes: it works after the match run
    was deleted or run again.

    Args:
        samples: a FiftyOne dataset or view.
        label_field: the class-label field the suggestions were applied to.
        field: where the scores are (None: "{label_field}_match").

    Returns:
        a dict: label_field, field, restored, edited (left alone: changed
        since the suggestion was applied).

    Raises:
        ValueError: a free-text field, no suggestion ever applied to it, or
            a run writing the scores now.
    """
    from fiftyone_blip import label_fixes

    return label_fixes.undo(samples, label_field, field)


def clear_flags(samples, label_field: str, field: str | None = None) -> dict:
    """Removes the mislabel tag from the flagged samples (and labels) of `samples`; nothing else changes.

    Scores, flags (`{field}_flagged`) and labels stay, so the review's
    decision is only the tag's: a sample another label field's flags hold
    with the same tag keeps it, and a tag on a sample these flags did not
    flag (a user's own) is never removed.

    Args:
        samples: a FiftyOne dataset or view (e.g. the selected samples).
        label_field: the field that was scored.
        field: where the scores are (None: "{label_field}_match").

    Returns:
        a dict: label_field, tag, cleared_samples, cleared_labels, kept_samples.

    Raises:
        ValueError: no flags stored (run `find_mislabels` first), or a run
            writing the scores now.
    """
    from fiftyone_blip import label_fixes

    return label_fixes.clear(samples, label_field, field)
