"""BLIP as FiftyOne zoo models: ITC embeddings and zero-shot classes, ITM scores, captions.

    import fiftyone.zoo as foz

    foz.register_zoo_model_source("https://github.com/fiftyone-blip/fiftyone-blip")
    model = foz.load_zoo_model("blip-itc-base-coco")                  # embeddings + text prompts
    dataset.compute_embeddings(model, "blip_embedding", batch_size=32)
    model = foz.load_zoo_model("blip-itc-base-coco", classes=["cat", "dog"])
    dataset.apply_model(model, "zero_shot")                           # Classification, confidence
    dataset.apply_model(foz.load_zoo_model("blip-captioning-base"), "caption")
    dataset.apply_model(foz.load_zoo_model("blip-itm-base-coco"), "itm", text_field="caption")

The models are listed in `fiftyone_blip/zoo_source/manifest.json`, the remote
model-zoo source FiftyOne reads (a manifest and a module). Each entry's
`default_deployment_config_dict` names a class of this module and its default
settings; keyword arguments of `load_zoo_model` override them (`model=` takes
any hub id, local directory or bundled name, as `fiftyone_blip.load_model`).

The models run the library's own model steps (`models.load_model`,
`embeddings.Embedder`, `mislabels.Matcher`, `captions.Captioner`, the
`images.Preprocessor`), and while FiftyOne holds one entered they read the
image files themselves, as the library does (`_FileLoops`: its decoder, the
engine's decode threads, one unreadable file costing its own sample), so a
zoo model and `fiftyone_blip.embed`/`caption` give the same numbers. The
library's functions remain the fast path for whole datasets (resumable runs,
run records, shards); these models are for code that lives in FiftyOne's API
(`apply_model`, `compute_embeddings`, the brain).

`fiftyone zoo models download NAME` fetches a hub checkpoint into the model's
zoo folder (`download`), from where it loads with no network.

A similarity index built by `fiftyone_blip.embed` stores the source's URL and
a model name (`index_reference`), so a later process reloads its prompt model
with `foz.load_zoo_model(url, model_name=...)`: from the local copy of the
source when its `model_zoo_dir` has one, else FiftyOne downloads the source
from the URL first, as for any remote zoo source.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import json
import logging
import math
import os
import shutil
import tempfile
import threading
from pathlib import Path

import eta.core.config as etac
import eta.core.learning as etal
import fiftyone.core.models as fom
import numpy as np

from fiftyone_blip.zoo_manifest import (  # noqa: F401 (the source's names, read here too)
    REPOSITORY_URL,
    SOURCE_DIR,
    SOURCE_NAME,
    SOURCE_URL_ENV,
    deployment,
    index_reference,
    manifest,
    model_entries,
    register_source,
    source_url,
)

logger = logging.getLogger(__name__)


def load_model(name: str, **kwargs):
    """Builds the zoo model `name` with `kwargs` over its defaults (what FiftyOne's loader does)."""
    return fom.load_model(deployment(name), **kwargs)


# --- weights in the zoo folder ----------------------------------------------------------------------------

# Written into a weights folder before it takes its final name: a folder holding it is one a download made.
DOWNLOAD_FILE = ".fiftyone-blip-download.json"


def download(name: str, model_path: str | os.PathLike) -> Path:
    """Fetches the weights of the zoo model `name` into the zoo folder (FiftyOne's `download_model`).

    A hub checkpoint's files (config, processor, tokenizer, .safetensors
    weights) go into a folder beside the marker `model_path` (e.g.
    `<model_zoo_dir>/fiftyone-blip/blip-itc-base-coco/`): copied from the
    local Hugging Face cache when it holds them, else fetched with
    `huggingface_hub.snapshot_download` (HF_ENDPOINT, tokens and proxies as
    for any hub download). They land in a temporary folder, are checked to be
    the BLIP architecture the model needs, and only then take the folder's
    name; the marker, which FiftyOne reads as "downloaded", is written last.
    A failed download leaves neither. A bundled checkpoint, or a model whose
    checkpoint is chosen at load (`blip-itc`), has nothing to fetch: its
    marker says so. Returns the marker's path.
    """
    from fiftyone_blip import models

    config = deployment(name)["config"]
    checkpoint, revision = config.get("model"), config.get("revision")
    marker = Path(model_path)
    weights = None
    if checkpoint is not None and checkpoint not in models.BUNDLED:
        task = globals()[deployment(name)["type"].rsplit(".", 1)[1]]._TASK
        weights = _fetch(checkpoint, revision, task, marker.with_suffix(""))
    record = {"model": name, "checkpoint": checkpoint, "revision": revision, "weights": weights}
    marker.parent.mkdir(parents=True, exist_ok=True)
    partial = marker.with_name(marker.name + ".partial")
    partial.write_text(json.dumps(record, indent=2) + "\n")
    partial.replace(marker)
    return marker


def _fetch(checkpoint: str, revision: str | None, task: str, folder: Path) -> str:
    """Puts the hub checkpoint's files into `folder` (replacing only an earlier download); returns its name."""
    if folder.exists() and not (folder / DOWNLOAD_FILE).is_file():
        raise ValueError(f"{folder} exists and was not made by a download of this model; move it away first")
    folder.parent.mkdir(parents=True, exist_ok=True)
    partial = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}.partial-"))
    try:
        _fill(partial, checkpoint, revision, task)
        (partial / DOWNLOAD_FILE).write_text(json.dumps({"checkpoint": checkpoint, "revision": revision}) + "\n")
        if folder.exists():
            stale = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}.old-"))
            folder.replace(stale / folder.name)
            partial.replace(folder)
            shutil.rmtree(stale)
        else:
            partial.replace(folder)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    return folder.name


def _fill(partial: Path, checkpoint: str, revision: str | None, task: str) -> None:
    """Fills the empty folder `partial` with the checkpoint's files, checked: from the local Hugging Face
    cache when it holds a whole model (one loaded before downloads with no network), else from the hub."""
    from huggingface_hub import snapshot_download

    from fiftyone_blip import models

    try:
        cached = models._hub_snapshot(checkpoint, revision, local_only=True)
        shutil.copytree(cached, partial, dirs_exist_ok=True, copy_function=_link_or_copy)
        models._checked_config(checkpoint, partial, task, None)
        return
    except models.ModelLoadError:  # not cached, or only in part (a config read before): start afresh
        shutil.rmtree(partial)
        partial.mkdir()
    try:
        snapshot_download(checkpoint, revision=revision, allow_patterns=models.HUB_FILES, local_dir=partial)
    except Exception as error:  # the hub client raises many types for "offline" or "not found"
        reason = (str(error).strip().splitlines() or [""])[0][:200]
        raise models.ModelLoadError(
            f"cannot download {checkpoint!r} from the hub ({type(error).__name__}: {reason})"
        ) from None
    models._checked_config(checkpoint, partial, task, None)


def _link_or_copy(source, target):
    """Hard-links a cached file (no second copy on disk), or copies it across file systems."""
    try:
        os.link(os.path.realpath(source), target)  # the cache's snapshot files are symlinks to its blobs
    except OSError:
        shutil.copy2(source, target)
    return target


def _checkpoint(config) -> str | None:
    """What a zoo model loads: the folder its download fetched when that holds the checkpoint and
    revision asked for, else its `model` setting (bundled, a local folder, or the Hugging Face cache)."""
    try:
        record = json.loads(Path(config.model_path).read_text()) if config.model_path else {}
    except (OSError, ValueError):
        record = {}
    weights = record.get("weights")
    if weights and (record.get("checkpoint"), record.get("revision")) == (config.model, config.revision):
        folder = Path(config.model_path).parent / weights
        if (folder / DOWNLOAD_FILE).is_file():
            return str(folder)
    return config.model


# --- the models -------------------------------------------------------------------------------------------


class _ImageTransform:
    """PIL image or HWC uint8 array -> normalised CHW float tensor (the library's `Preprocessor`)."""

    def __init__(self, preprocessor):
        self.preprocessor = preprocessor

    def __call__(self, image):
        import torch
        from PIL import Image

        if not isinstance(image, Image.Image):
            image = Image.fromarray(np.asarray(image))
        return torch.from_numpy(self.preprocessor.from_image(image)[0])


class BlipModelConfig(etac.Config, etal.HasPublishedModel):
    """Settings every BLIP zoo model shares.

    Args:
        model: hub id, local directory or bundled name (None: the task's Salesforce default).
        device: "auto", "cpu", "cuda" or "mps" ("auto").
        dtype: "auto", "float32", "bfloat16", "float16" or "int8" ("auto").
        revision: hub revision (None).
        resize: "squash", "center-crop" or "letterbox" ("squash", BLIP's own).
        num_workers: threads that decode image files for `apply_model` and
            `compute_embeddings`; 0 decodes in the calling thread (None: one
            per core, as the library's runs).
    """

    _KEYS = ("model", "device", "dtype", "revision", "resize", "num_workers")

    @classmethod
    def keys(cls) -> tuple[str, ...]:
        """The settings this config takes (`load_zoo_model` keywords)."""
        return cls._KEYS

    def __init__(self, d):
        unknown = sorted(set(d) - set(self.keys()))
        if unknown:
            raise ValueError(f"unknown setting(s) {unknown} for {type(self).__name__}; known: {list(self.keys())}")
        self.model = self.parse_string(d, "model", default=None)
        self.device = self.parse_string(d, "device", default="auto")
        self.dtype = self.parse_string(d, "dtype", default="auto")
        self.revision = self.parse_string(d, "revision", default=None)
        self.resize = self.parse_string(d, "resize", default="squash")
        self.num_workers = d.get("num_workers")
        if self.num_workers is not None and (
            isinstance(self.num_workers, bool) or not isinstance(self.num_workers, int) or self.num_workers < 0
        ):
            raise ValueError(f"`num_workers` must be an integer >= 0 or None, got {self.num_workers!r}")
        # Where FiftyOne's loader records the zoo copy (HasPublishedModel): the marker of a download.
        self.model_name = None
        self.model_path = None


def _check_classes(classes) -> list[str] | None:
    if classes is None:
        return None
    if isinstance(classes, str) or not all(isinstance(c, str) and c.strip() for c in classes) or not classes:
        raise ValueError(f"`classes` must be a non-empty list of non-empty strings, got {classes!r}")
    return [c.strip() for c in classes]


class _BlipModel(fom.Model):
    """Loads through `fiftyone_blip.models.load_model`; turns images into one pixel batch.

    Not a `TorchModelMixin`: FiftyOne's DataLoader path imports
    `fiftyone.utils.torch`, which needs torchvision (see `_FileLoops`). While
    FiftyOne holds the model entered (`apply_model`, `compute_embeddings`),
    the model reads the image files itself, as the library does; images
    handed over decoded (video frames, patches, direct calls) are resized by
    `_pixels`.
    """

    _TASK = "match"

    def __init__(self, config):
        from fiftyone_blip import models

        self.config = config
        self.loaded = models.load_model(
            _checkpoint(config), task=self._TASK, device=config.device, dtype=config.dtype, revision=config.revision
        )
        self.preprocessor = self.loaded.preprocessor(config.resize)
        self._transforms = _ImageTransform(self.preprocessor)
        self._preprocess = True

    def __enter__(self):
        _FILE_LOOPS.enter()
        return self

    def __exit__(self, *args):
        _FILE_LOOPS.exit()

    @property
    def media_type(self):
        return "image"

    @property
    def ragged_batches(self):
        return False  # images of any size batch together: each is resized to the model's square input

    @property
    def transforms(self):
        return self._transforms

    @property
    def preprocess(self):
        return self._preprocess

    @preprocess.setter
    def preprocess(self, value):
        self._preprocess = value

    def _pixels(self, images):
        """A (N, 3, S, S) tensor from decoded images, or from FiftyOne's already-transformed batch."""
        import torch

        if isinstance(images, torch.Tensor) and images.ndim == 4:
            return images
        if self._preprocess:
            images = [self._transforms(image) for image in images]
        return torch.stack([torch.as_tensor(image) for image in images])

    def predict(self, arg):
        return self.predict_all([arg])[0]

    def _predict_pixels(self, pixels, samples):
        """`predict_all` on a pixel batch the model decoded itself (`samples`: their samples)."""
        if isinstance(self, fom.SamplesMixin):
            return self.predict_all(pixels, samples=samples)
        return self.predict_all(pixels)

    def _decoded_batches(self, samples, batch_size: int, skip_failures: bool):
        """Yields (batch of samples, [(sample, pixels)] of the files that decoded), decoding ahead in
        the engine's threads; a file that fails is logged with its reason (raised without `skip_failures`)."""
        from fiftyone_blip import engine
        from fiftyone_blip.images import ImageDecodeError

        workers = engine.default_workers() if self.config.num_workers is None else self.config.num_workers
        items = ((sample.id, sample, sample.filepath) for sample in samples)
        decoded = engine.decoded_in_order(
            items, lambda path: self.preprocessor.pixels(path)[0], workers, max(2 * batch_size, 4 * workers)
        )
        for batch in engine._batches(decoded, batch_size):
            good = []
            for _, sample, pixels, error in batch:
                if error is None:
                    good.append((sample, pixels))
                elif not skip_failures:
                    raise ImageDecodeError(f"{sample.filepath}: {error}")
                else:
                    logger.warning("Sample: %s\nError: %s: %s\n", sample.id, sample.filepath, error)
            yield [entry[1] for entry in batch], good

    def _to_device(self, good):
        return self.preprocessor.to_pixel_values([pixels for _, pixels in good], self.loaded.device)


class BlipItcModelConfig(BlipModelConfig):
    """`BlipModelConfig` plus zero-shot classification.

    Args:
        classes: class names for zero-shot classification by `apply_model` (None).
        text_prompt: text put before each class name, e.g. "a picture of" (None).
    """

    _KEYS = BlipModelConfig._KEYS + ("classes", "text_prompt")

    def __init__(self, d):
        super().__init__(d)
        self.classes = _check_classes(d.get("classes"))
        self.text_prompt = self.parse_string(d, "text_prompt", default=None)
        self.filter_classes = None  # set by `apply_model(..., classes=...)` for one call


class BlipItcModel(_BlipModel, fom.EmbeddingsMixin, fom.PromptMixin, fom.LogitsMixin):
    """BLIP ITC: image embeddings (`embed_all`), text prompts (`embed_prompts`) in the same
    space, and zero-shot classification over `classes` (softmax of the cosines at BLIP's
    initial temperature; a ranking more than a calibrated probability)."""

    def __init__(self, config: BlipItcModelConfig):
        from fiftyone_blip.embeddings import Embedder

        super().__init__(config)
        fom.LogitsMixin.__init__(self)
        self.embedder = Embedder(self.loaded)
        self.logit_scale = math.exp(getattr(self.loaded.model.config, "logit_scale_init_value", math.log(1 / 0.07)))
        self._class_features: dict[tuple, np.ndarray] = {}

    @property
    def has_embeddings(self):
        return True

    @property
    def can_embed_prompts(self):
        return True

    @property
    def has_logits(self):
        return True

    @property
    def classes(self) -> list[str] | None:
        # `apply_model(model, field, classes=[...])` narrows (or, with no configured classes, sets) the candidates
        if self.config.filter_classes:
            return sorted(self.config.filter_classes)
        return self.config.classes

    def embed(self, arg):
        return self.embed_all([arg])[0]

    def embed_all(self, args):
        return self.embedder.embed_images(self._pixels(args))

    def get_embeddings(self):
        raise NotImplementedError("BlipItcModel returns embeddings from embed() and embed_all() directly")

    def embed_prompt(self, arg):
        return self.embed_prompts([arg])[0]

    def embed_prompts(self, args):
        return self.embedder.embed_texts(list(args))

    def _prompt(self, label: str) -> str:
        return f"{self.config.text_prompt} {label}" if self.config.text_prompt else label

    def class_logits(self, images) -> np.ndarray:
        """(N, C) scaled cosines of the images against the prompts of `classes`."""
        classes = self.classes
        if not classes:
            raise ValueError(
                "zero-shot classification needs `classes`: load the model with classes=[...] "
                "or pass apply_model(..., classes=[...]); for embeddings use compute_embeddings"
            )
        key = (tuple(classes), self.config.text_prompt)
        if key not in self._class_features:
            self._class_features[key] = self.embed_prompts([self._prompt(c) for c in classes])
        return self.logit_scale * self.embed_all(images) @ self._class_features[key].T

    def predict_all(self, args):
        import fiftyone.core.labels as fol

        logits = self.class_logits(args)
        shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
        probabilities = shifted / shifted.sum(axis=1, keepdims=True)
        classes = self.classes
        labels = []
        for row, scores in zip(probabilities, logits):
            best = int(np.argmax(row))
            label = fol.Classification(label=classes[best], confidence=float(row[best]))
            if self.store_logits:
                label.logits = scores.astype(np.float32)
            labels.append(label)
        return labels


class BlipItmModelConfig(BlipModelConfig):
    """`BlipModelConfig` plus what to score.

    Args:
        classes: class names: each image gets the class whose prompt the ITM head
            matches best (None).
        text_prompt: text put before each class name (None).
        text: one text scored against every image (None).
        text_field: the sample field whose text (a string or a label's `label`)
            is scored against its image (None); `apply_model(..., text_field=...)`
            sets it too.
    """

    _KEYS = BlipModelConfig._KEYS + ("classes", "text_prompt", "text", "text_field")

    def __init__(self, d):
        super().__init__(d)
        self.classes = _check_classes(d.get("classes"))
        self.text_prompt = self.parse_string(d, "text_prompt", default=None)
        self.text = self.parse_string(d, "text", default=None)
        self.text_field = self.parse_string(d, "text_field", default=None)
        self.filter_classes = None


class BlipItmModel(_BlipModel, fom.SamplesMixin):
    """BLIP ITM: the match probability of an image and a text (softmax of the ITM head, class 1),
    as a `Regression`; with `classes`, zero-shot classification by the best-matching class prompt
    (a `Classification` whose confidence is that prompt's match probability)."""

    def __init__(self, config: BlipItmModelConfig):
        from fiftyone_blip.mislabels import Matcher

        super().__init__(config)
        fom.SamplesMixin.__init__(self)
        self.matcher = Matcher(self.loaded)

    @property
    def needs_fields(self):
        # apply_model sets the fields of its keyword arguments for one call; the configured text_field stays
        fields = dict(self._fields)
        if self.config.text_field and "text_field" not in fields:
            fields["text_field"] = self.config.text_field
        return fields

    @needs_fields.setter
    def needs_fields(self, fields):
        self._fields = dict(fields or {})

    @property
    def classes(self) -> list[str] | None:
        if self.config.filter_classes:
            return sorted(self.config.filter_classes)
        return self.config.classes

    def scores(self, images, texts: list[str]) -> np.ndarray:
        """ITM match probabilities of (images[i], texts[i])."""
        return self._itm(images, list(range(len(texts))), texts)

    def _itm(self, images, image_index, texts):
        with self.matcher.torch.inference_mode(), self.loaded.autocast():
            embeds = self.loaded.image_embeds(self._pixels(images))
            return self.matcher.itm(embeds, image_index, texts)

    @staticmethod
    def _text_of(value):
        text = getattr(value, "label", value)
        return text if isinstance(text, str) and text.strip() else None

    def predict(self, arg, sample=None):
        return self.predict_all([arg], samples=None if sample is None else [sample])[0]

    def predict_all(self, args, samples=None):
        import fiftyone.core.labels as fol

        classes = self.classes
        if classes:
            prompts = [f"{self.config.text_prompt} {c}" if self.config.text_prompt else c for c in classes]
            n = len(args)
            probs = self._itm(args, [i for i in range(n) for _ in prompts], prompts * n).reshape(n, len(prompts))
            return [
                fol.Classification(label=classes[int(np.argmax(row))], confidence=float(row.max())) for row in probs
            ]
        field = self.needs_fields.get("text_field")
        if self.config.text is not None:
            texts = [self.config.text] * len(args)
        elif field and samples is not None:
            texts = [self._text_of(sample.get_field(field)) for sample in samples]
        else:
            raise ValueError("the ITM model needs `classes`, `text`, or `text_field` (apply_model(..., text_field=F))")
        index = [i for i, text in enumerate(texts) if text is not None]
        if not index:
            return [None] * len(texts)
        probs = self._itm(self._pixels(args)[index], list(range(len(index))), [texts[i] for i in index])
        out = [None] * len(texts)  # a sample with no text gets no score
        for i, p in zip(index, probs):
            out[i] = fol.Regression(value=float(p))
        return out


# `CaptionSettings` fields a zoo captioner does not take: its checkpoint is the config's own `model`,
# FiftyOne's `label_field` is the field, and language adapters belong to `fiftyone_blip.caption` runs.
_NOT_ZOO_CAPTION_SETTINGS = ("model", "field", "language")


class BlipCaptionModelConfig(BlipModelConfig):
    """`BlipModelConfig` plus the decoding settings of `fiftyone_blip.captions.CaptionSettings`
    (strategy, num_beams, max_new_tokens, prompt, ban_words, ...: every field but model, field
    and language), with its checks; the best of `num_captions` candidates is the label."""

    @classmethod
    def caption_keys(cls) -> tuple[str, ...]:
        from fiftyone_blip.captions import CaptionSettings

        return tuple(f.name for f in CaptionSettings.fields() if f.name not in _NOT_ZOO_CAPTION_SETTINGS)

    @classmethod
    def keys(cls) -> tuple[str, ...]:
        return BlipModelConfig._KEYS + cls.caption_keys()

    def __init__(self, d):
        from fiftyone_blip.captions import CaptionSettings

        super().__init__(d)
        self.settings = CaptionSettings(**{k: d[k] for k in self.caption_keys() if k in d})


class BlipCaptionModel(_BlipModel):
    """BLIP captions for `apply_model`: a `Classification` whose label is the caption and whose
    confidence is the geometric mean of its token probabilities (FiftyOne has no caption label)."""

    _TASK = "caption"

    def __init__(self, config: BlipCaptionModelConfig):
        from fiftyone_blip.captions import Captioner

        super().__init__(config)
        self.captioner = Captioner(self.loaded, config.settings)

    def predict_all(self, args):
        import fiftyone.core.labels as fol

        rows = self.captioner(self._pixels(args))
        return [fol.Classification(label=row["caption"], confidence=row["confidence"]) for row in rows]


# --- FiftyOne's loops over image files --------------------------------------------------------------


class _FileLoops:
    """While a BLIP zoo model is entered, FiftyOne's loops over image files run the model's own.

    FiftyOne's `apply_model` and `compute_embeddings` read every file of a
    batch with OpenCV before a model sees it, so one unreadable file fails its
    whole batch; and they pass `num_workers` only to their DataLoader path,
    which imports `fiftyone.utils.torch` and with it torchvision (no build on
    the package index for torch 2.13). For a BLIP model, the four loops below
    decode each file with the library's `images.load_image` in the engine's
    decode threads (the model's `num_workers`), and a file that fails costs
    its own sample: logged with its reason, nothing written for it. Every
    other model goes through FiftyOne's own loops. If FiftyOne's loops change
    shape, they are left alone (with one warning) and batches fail as FiftyOne's do.
    """

    SIGNATURES = {
        "_apply_image_model_single": (
            "samples", "model", "label_field", "confidence_thresh", "classes", "skip_failures", "filename_maker",
            "progress",
        ),
        "_apply_image_model_batch": (
            "samples", "model", "label_field", "confidence_thresh", "classes", "batch_size", "skip_failures",
            "filename_maker", "progress",
        ),
        "_compute_image_embeddings_single": ("samples", "model", "embeddings_field", "skip_failures", "progress"),
        "_compute_image_embeddings_batch": (
            "samples", "model", "embeddings_field", "batch_size", "skip_failures", "progress",
        ),
    }  # fmt: skip
    HELPERS = ("_select_fields_for_inference", "_select_fields_for_embeddings", "_export_arrays")

    def __init__(self):
        self._lock = threading.Lock()
        self._depth = 0
        self._originals: dict = {}
        self._warned = False

    def enter(self) -> None:
        with self._lock:
            self._depth += 1
            if self._depth == 1 and self._fits():
                for name in self.SIGNATURES:
                    self._originals[name] = getattr(fom, name)
                    setattr(fom, name, self._hook(self._originals[name]))

    def exit(self) -> None:
        with self._lock:
            self._depth = max(0, self._depth - 1)
            if self._depth == 0:
                for name, original in self._originals.items():
                    setattr(fom, name, original)
                self._originals = {}

    def _fits(self) -> bool:
        try:
            fits = all(
                tuple(inspect.signature(getattr(fom, name)).parameters) == params
                for name, params in self.SIGNATURES.items()
            ) and all(callable(getattr(fom, name, None)) for name in self.HELPERS)
        except (AttributeError, TypeError, ValueError):
            fits = False
        if not fits and not self._warned:
            self._warned = True
            logger.warning("FiftyOne's image loops changed: BLIP zoo models get images decoded by FiftyOne")
        return fits

    @staticmethod
    def _hook(original):
        signature = inspect.signature(original)
        run = _label_files if "label_field" in signature.parameters else _embed_files

        @functools.wraps(original)
        def hook(*args, **kwargs):
            arguments = signature.bind(*args, **kwargs).arguments
            if not isinstance(arguments["model"], _BlipModel):
                return original(*args, **kwargs)
            return run(**arguments)

        return hook


_FILE_LOOPS = _FileLoops()


def _label_files(
    samples, model, label_field, confidence_thresh, classes, skip_failures, filename_maker, progress, batch_size=None
):
    """FiftyOne's `_apply_image_model_batch` (and `_single`) for a BLIP model: see `_FileLoops`."""
    import fiftyone.core.collections as foc
    import fiftyone.core.utils as fou

    samples = fom._select_fields_for_inference(samples, model)
    with contextlib.ExitStack() as context:
        bar = context.enter_context(fou.ProgressBar(samples, progress=progress))
        saver = context.enter_context(foc.SaveContext(samples))
        for batch, good in model._decoded_batches(samples, batch_size or 1, skip_failures):
            try:
                labels = model._predict_pixels(model._to_device(good), [s for s, _ in good]) if good else []
                for (sample, _), label in zip(good, labels):
                    if filename_maker is not None:
                        fom._export_arrays(label, sample.filepath, filename_maker)
                    sample.add_labels(
                        label, label_field=label_field, confidence_thresh=confidence_thresh, classes=classes
                    )
                    saver.save(sample)
            except Exception as error:
                if not skip_failures:
                    raise
                logger.warning("Batch: %s - %s\nError: %s\n", batch[0].id, batch[-1].id, error)
            bar.update(len(batch))


def _embed_files(samples, model, embeddings_field, skip_failures, progress, batch_size=None):
    """FiftyOne's `_compute_image_embeddings_batch` (and `_single`) for a BLIP model: see `_FileLoops`.

    Returns what FiftyOne's returns: None with a field, else an (N, D) array,
    or a list with None for each sample without a vector.
    """
    import fiftyone.core.collections as foc
    import fiftyone.core.utils as fou

    samples = fom._select_fields_for_embeddings(samples, embeddings_field)
    embeddings: list = []
    missing = False
    with contextlib.ExitStack() as context:
        bar = context.enter_context(fou.ProgressBar(samples, progress=progress))
        saver = None if embeddings_field is None else context.enter_context(foc.SaveContext(samples))
        for batch, good in model._decoded_batches(samples, batch_size or 1, skip_failures):
            vectors = {}
            try:
                if good:
                    vectors = dict(zip([s.id for s, _ in good], model.embed_all(model._to_device(good))))
            except Exception as error:
                if not skip_failures:
                    raise
                logger.warning("Batch: %s - %s\nError: %s\n", batch[0].id, batch[-1].id, error)
            missing = missing or len(vectors) < len(batch)
            for sample in batch:
                vector = vectors.get(sample.id)
                if saver is None:
                    embeddings.append(vector)
                elif vector is not None:  # a sample whose file failed keeps what its field held
                    sample[embeddings_field] = vector
                    saver.save(sample)
            bar.update(len(batch))
    if embeddings_field is not None:
        return None
    if missing:
        return embeddings
    return np.stack(embeddings) if embeddings else np.empty((0, 0), dtype=float)


__all__ = [
    "BlipCaptionModel",
    "BlipItcModel",
    "BlipItmModel",
    "index_reference",
    "load_model",
    "register_source",
    "source_url",
]
