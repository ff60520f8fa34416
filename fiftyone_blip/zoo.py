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
`images.Preprocessor`), so a zoo model and `fiftyone_blip.embed`/`caption`
give the same numbers. The library's functions remain the fast path (parallel
decode, resumable runs, run records); these models are for code that lives in
FiftyOne's API (`apply_model`, `compute_embeddings`, the brain).

A similarity index built by `fiftyone_blip.embed` stores the source's URL and
a model name (`index_reference`), so a later process reloads its prompt model
with `foz.load_zoo_model(url, model_name=...)`: from the local copy of the
source when its `model_zoo_dir` has one, else FiftyOne downloads the source
from the URL first, as for any remote zoo source.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import eta.core.config as etac
import eta.core.learning as etal
import fiftyone.core.models as fom
import numpy as np

REPOSITORY_URL = "https://github.com/fiftyone-blip/fiftyone-blip"
# Where a later process fetches the source when its model_zoo_dir lacks it; a mirror
# (an archive URL with the same content) can stand in for GitHub on closed networks.
SOURCE_URL_ENV = "FIFTYONE_BLIP_ZOO_SOURCE"
SOURCE_NAME = "fiftyone-blip"
SOURCE_DIR = Path(__file__).parent / "zoo_source"
# Name under which indexes built before the source existed stored their model.
LEGACY_ITC_NAME = "fiftyone-blip-itc"
GENERIC_ITC_NAME = "blip-itc"


def source_url() -> str:
    """The URL a similarity index stores to reload its model: $FIFTYONE_BLIP_ZOO_SOURCE or the repository."""
    return os.environ.get(SOURCE_URL_ENV) or REPOSITORY_URL


def manifest() -> dict:
    """The source's manifest as shipped in the package."""
    return json.loads((SOURCE_DIR / "manifest.json").read_text())


def model_entries() -> dict[str, dict]:
    """{zoo name: manifest entry} of every model of the source."""
    return {entry["base_name"]: entry for entry in manifest()["models"]}


def _deployment(name: str) -> dict:
    entries = model_entries()
    if name not in entries:
        raise ValueError(f"`model_name` must be one of {sorted(entries)}, got {name!r}")
    return entries[name]["default_deployment_config_dict"]


def load_model(name: str, **kwargs):
    """Builds the zoo model `name` with `kwargs` over its defaults (what FiftyOne's loader does)."""
    return fom.load_model(_deployment(name), **kwargs)


# --- the source in FiftyOne's model_zoo_dir -------------------------------------------------------------


def register_source(models_dir: str | os.PathLike | None = None, url: str | None = None) -> Path:
    """Copies the package's zoo source into FiftyOne's `model_zoo_dir`; returns its folder.

    The copy records `url` (default: `source_url()`), so that FiftyOne treats it
    as the registered source of that URL (`foz.list_zoo_model_sources()`) and
    loads `foz.load_zoo_model(url, model_name=...)` from it with no download.
    Idempotent. It only writes into `<model_zoo_dir>/fiftyone-blip`, and only
    over a source of that name: any other folder there is an error.
    """
    import fiftyone as fo
    import fiftyone.zoo.models as fozm

    root = Path(models_dir or fo.config.model_zoo_dir).expanduser() / SOURCE_NAME
    existing = root / "manifest.json"
    if root.exists():
        try:
            name = json.loads(existing.read_text()).get("name")
        except (OSError, ValueError):
            name = None
        if name != SOURCE_NAME:
            raise ValueError(f"{root} exists and is not a {SOURCE_NAME} model source; move it away first")
    root.mkdir(parents=True, exist_ok=True)
    text = dict(manifest(), url=url or source_url())
    files = {
        "manifest.json": json.dumps(text, indent=4) + "\n",
        "__init__.py": (SOURCE_DIR / "__init__.py").read_text(),
    }
    for filename, content in files.items():
        path = root / filename
        if not path.exists() or path.read_text() != content:
            tmp = path.with_name(path.name + ".tmp")
            tmp.write_text(content)
            tmp.replace(path)
    invalidate = getattr(fozm, "_invalidate_zoo_models_manifest", None)
    if invalidate is not None:  # FiftyOne versions that can memoize the manifest: it predates this copy
        invalidate()
    return root


def index_reference(model: str, revision: str | None = None) -> tuple[str, dict]:
    """(model, model_kwargs) a brain similarity run stores for a BLIP ITC checkpoint.

    `model` is the source URL and `model_kwargs` carries `model_name` (the zoo
    name) and `model` (the checkpoint: a bundled name, an absolute directory or a
    hub id), so the brain's `foz.load_zoo_model(model, **model_kwargs)` finds the
    model in any process. Registers the source in this process's model_zoo_dir.
    """
    url = source_url()
    register_source(url=url)
    name = GENERIC_ITC_NAME
    for zoo_name, entry in model_entries().items():
        config = entry["default_deployment_config_dict"]
        if config["type"].endswith(".BlipItcModel") and config["config"].get("model") == model:
            name = zoo_name
            break
    kwargs = {"model_name": name, "model": model}
    if revision:
        kwargs["revision"] = revision
    return url, kwargs


def index_checkpoint(model, model_kwargs) -> str | None:
    """The BLIP checkpoint of a brain run's model if it is one of this source's ITC models, else None.

    Both ways a similarity index names it count: `fiftyone_blip.embed` stores the
    source URL with `model_kwargs={"model_name": ..., "model": ...}`
    (`index_reference`); FiftyOne's own `compute_similarity(model="blip-itc-base-coco")`
    stores the zoo name as `model` (and the `load_zoo_model` keywords, if any).
    """
    kwargs = model_kwargs or {}
    if model == LEGACY_ITC_NAME:
        return kwargs.get("model")
    name = kwargs.get("model_name", model)
    if isinstance(model, str) and name in model_entries():
        deployment = _deployment(name)
        if deployment["type"].endswith(".BlipItcModel"):
            from fiftyone_blip.models import DEFAULT_MODELS

            return kwargs.get("model") or deployment["config"].get("model") or DEFAULT_MODELS["match"]
    return None


def built_by_embed(model, model_kwargs) -> bool:
    """Whether `fiftyone_blip.embed` built a similarity index (it stores `index_reference`), not a user."""
    return model == LEGACY_ITC_NAME or (
        "model_name" in (model_kwargs or {}) and index_checkpoint(model, model_kwargs) is not None
    )


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
    """

    _KEYS = ("model", "device", "dtype", "revision", "resize")

    def __init__(self, d):
        unknown = sorted(set(d) - set(self._KEYS))
        if unknown:
            raise ValueError(f"unknown setting(s) {unknown} for {type(self).__name__}; known: {list(self._KEYS)}")
        self.model = self.parse_string(d, "model", default=None)
        self.device = self.parse_string(d, "device", default="auto")
        self.dtype = self.parse_string(d, "dtype", default="auto")
        self.revision = self.parse_string(d, "revision", default=None)
        self.resize = self.parse_string(d, "resize", default="squash")
        # Where FiftyOne's loader records the zoo copy (HasPublishedModel); weights come from `model`.
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

    Not a `TorchModelMixin`: FiftyOne's DataLoader path needs torchvision, which
    fiftyone-blip does not. With `batch_size`, `apply_model` and
    `compute_embeddings` pass lists of decoded images of any size, which
    `_pixels` resizes into one batch.
    """

    _TASK = "match"

    def __init__(self, config):
        from fiftyone_blip import models
        from fiftyone_blip.images import Preprocessor

        self.config = config
        self.loaded = models.load_model(
            config.model, task=self._TASK, device=config.device, dtype=config.dtype, revision=config.revision
        )
        preprocessor = Preprocessor(self.loaded.processor.image_processor, self.loaded.image_size, config.resize)
        self._transforms = _ImageTransform(preprocessor)
        self._preprocess = True

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


class BlipCaptionModelConfig(BlipModelConfig):
    """`BlipModelConfig` plus the decoding settings of `fiftyone_blip.captions.CaptionSettings`
    (strategy, num_beams, max_new_tokens, prompt, ...)."""

    _KEYS = BlipModelConfig._KEYS + (
        "strategy",
        "num_beams",
        "num_beam_groups",
        "diversity_penalty",
        "top_k",
        "top_p",
        "temperature",
        "seed",
        "min_new_tokens",
        "max_new_tokens",
        "repetition_penalty",
        "no_repeat_ngram_size",
        "prompt",
    )

    def __init__(self, d):
        from fiftyone_blip.captions import CaptionSettings

        super().__init__(d)
        self.settings = CaptionSettings(**{k: d[k] for k in self._KEYS[len(BlipModelConfig._KEYS) :] if k in d})


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


__all__ = [
    "BlipCaptionModel",
    "BlipItcModel",
    "BlipItmModel",
    "index_reference",
    "load_model",
    "register_source",
    "source_url",
]
