"""LoRA language adapters for BLIP's text decoder: train, save, find, load and switch.

BLIP's decoder writes English. A language adapter teaches it another language
without copying or retraining the model:

- LoRA matrices on the text decoder's attention, cross-attention and
  feed-forward layers (the vision encoder stays frozen);
- new tokens for the words and characters the base tokenizer cannot write
  (BLIP's bert-base-uncased tokenizer lower-cases and strips accents, and has
  no vocabulary for most scripts): their embedding rows, which BLIP ties to
  the output layer, train with the adapter (peft's trainable tokens);
- a cased, accent-keeping tokenizer saved beside the adapter.

An adapter folder holds peft's standard files (`adapter_config.json`,
`adapter_model.safetensors`), the tokenizer files and `manifest.json`
(language, base model, data sizes, held-out metrics, parameter counts).

Adapters are found by language code in the registry folder
(`FIFTYONE_BLIP_ADAPTERS_DIR`, default `~/.fiftyone-blip/adapters`), then
among the adapters bundled for shapes-tiny. Several adapters load on one base
model and switch without reloading it; with no adapter active the base model
runs exactly as before.

    manifest = train_adapter(pairs_from_dataset(dataset, "caption_de"), "de", model="shapes-tiny")
    fiftyone_blip.caption(dataset, model="shapes-tiny", language="de", field="caption_de")
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import hashlib
import json
import os
import re
import shutil
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

BASE_LANGUAGE = "en"
REGISTRY_ENV = "FIFTYONE_BLIP_ADAPTERS_DIR"
DEFAULT_REGISTRY = Path("~/.fiftyone-blip/adapters")
BUNDLED_ADAPTERS_DIR = Path(__file__).parent / "shapes" / "adapters"
MANIFEST_FILE = "manifest.json"
WEIGHTS_FILE = "adapter_model.safetensors"
MAX_SIZE_RATIO = 0.05
FORMAT_VERSION = 1
# ISO 639 code with optional subtags ("de", "pt-BR", "zh-Hans"): never a path.
LANGUAGE_PATTERN = re.compile(r"^[a-z]{2,3}(?:-[A-Za-z0-9]{2,8})*$")
EMBEDDINGS = "text_decoder.bert.embeddings.word_embeddings"
# peft has no default LoRA targets for BLIP v1. These are the text decoder's
# self-attention, cross-attention, feed-forward and LM-head transform layers;
# nothing in the vision model matches.
TARGET_MODULES = (
    r"text_decoder\.(?:bert\.encoder\.layer\.\d+\.(?:(?:attention|crossattention)\.(?:self\.(?:query|key|value)"
    r"|output\.dense)|intermediate\.dense|output\.dense)|cls\.predictions\.transform\.dense)"
)


class AdapterError(ValueError):
    """A language adapter is missing, invalid, or does not fit the model."""


def check_language(language: str) -> str:
    """Returns the language code if it is a plain code; refuses anything that could be a path."""
    if not isinstance(language, str) or not LANGUAGE_PATTERN.match(language):
        raise AdapterError(
            f"`language` must be a language code such as 'de', 'ru' or 'pt-BR' (letters, digits, '-'), got {language!r}"
        )
    return language


def registry_dir() -> Path:
    """The folder that holds installed adapters, one subfolder per language."""
    return Path(os.environ.get(REGISTRY_ENV) or DEFAULT_REGISTRY).expanduser()


def search_dirs() -> list[Path]:
    """Where adapters are looked for, first match wins: the registry, then the bundled ones."""
    return [registry_dir(), BUNDLED_ADAPTERS_DIR]


def _inside(root: Path, language: str) -> Path:
    # The pattern already rules out separators and "..": this is a second lock.
    path = (root / check_language(language)).resolve()
    if not path.is_relative_to(root.resolve()):
        raise AdapterError(f"adapter {language!r} would resolve outside {str(root)!r}")
    return path


def read_manifest(directory: str | os.PathLike) -> dict:
    directory = Path(directory)
    try:
        manifest = json.loads((directory / MANIFEST_FILE).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise AdapterError(f"{str(directory)!r} is not a language adapter ({MANIFEST_FILE}: {error})") from None
    problem = manifest_problem(manifest)
    if problem:
        raise AdapterError(f"adapter folder {str(directory)!r} has a broken {MANIFEST_FILE}: {problem}")
    manifest["path"] = str(directory)
    return manifest


def manifest_problem(manifest) -> str | None:
    """What is wrong with a manifest's structure (None: nothing); every field the package reads is checked,
    so that one broken adapter folder cannot break listing, forms or other adapters."""
    if not isinstance(manifest, dict):
        return f"expected a JSON object, got {type(manifest).__name__}"
    shape = {
        "base_model": {"name": str},
        "tokenizer": {"first_added_id": int, "added_tokens": int},
        "metrics": {"held_out_exact_match": (int, float)},
        "parameters": {"trainable": int, "ratio": (int, float)},
        "data": {"train_pairs": int},
    }
    if not isinstance(manifest.get("language"), str) or not LANGUAGE_PATTERN.match(manifest["language"]):
        return f"'language' must be a language code, got {manifest.get('language')!r}"
    for section, fields in shape.items():
        value = manifest.get(section)
        if not isinstance(value, dict):
            return f"{section!r} must be an object, got {value!r}"
        for name, kind in fields.items():
            if not isinstance(value.get(name), kind) or isinstance(value.get(name), bool):
                return f"'{section}.{name}' is missing or not a {getattr(kind, '__name__', 'number')}"
    return None


def base_name(loaded) -> str:
    """How a manifest names a base model: the bundled name, the hub id, or the local directory."""
    from fiftyone_blip import models

    if loaded.name in models.BUNDLED or loaded.path == loaded.name:
        return loaded.name
    return loaded.path


def base_identity(loaded) -> dict:
    text = loaded.model.config.text_config
    return {
        "name": base_name(loaded),
        "revision": loaded.revision,
        "vocab_size": _base_vocab_size(loaded.model),
        "hidden_size": text.hidden_size,
        "num_hidden_layers": text.num_hidden_layers,
    }


def _base_vocab_size(model) -> int:
    # Once adapters are attached the embedding grows; the base size is kept aside.
    return getattr(model, "_fiftyone_blip_base_vocab_size", None) or model.config.text_config.vocab_size


def installed_adapters(model: str | None = None) -> list[dict]:
    """Manifests of the installed adapters (registry first, then bundled), each with its `path`.

    A folder with a broken manifest is skipped with a logged warning (see
    `broken_adapters`).

    Args:
        model: only adapters trained for this base model name (None: all).
    """
    found, broken = _scan(model)
    for path, problem in broken:
        _logger().warning("skipping language adapter folder %s: %s", path, problem)
    return found


def broken_adapters() -> list[tuple[str, str]]:
    """(folder, what is wrong) of each adapter folder whose manifest cannot be used."""
    return _scan(None)[1]


def _logger():
    import logging

    return logging.getLogger("fiftyone_blip.adapters")


def _scan(model: str | None) -> tuple[list[dict], list[tuple[str, str]]]:
    found, broken, seen = [], [], set()
    for root in search_dirs():
        if not root.is_dir():
            continue
        inside = root.resolve()
        for directory in sorted(root.iterdir()):
            if not LANGUAGE_PATTERN.match(directory.name) or not directory.resolve().is_relative_to(inside):
                continue  # not a language code, or a link out of the registry: never read
            if not (directory / MANIFEST_FILE).is_file():
                continue
            try:
                manifest = read_manifest(directory)
            except AdapterError as error:
                broken.append((str(directory), str(error)))
                continue
            base = manifest.get("base_model", {}).get("name")
            key = (directory.name, base)
            if key in seen or (model is not None and base != model):
                continue
            seen.add(key)
            found.append(manifest)
    return found, broken


def languages(model: str | None = None) -> list[str]:
    """English plus the languages of the installed adapters for `model` (None: any model), sorted."""
    return [BASE_LANGUAGE] + sorted({m["language"] for m in installed_adapters(model)} - {BASE_LANGUAGE})


def _mismatch(manifest: dict, loaded) -> str | None:
    trained = manifest.get("base_model", {})
    current = base_identity(loaded)
    same_name = trained.get("name") == current["name"]
    same_revision = None in (trained.get("revision"), current["revision"]) or trained["revision"] == current["revision"]
    same_shape = all(trained.get(k) == current[k] for k in ("vocab_size", "hidden_size", "num_hidden_layers"))
    if same_name and same_revision and same_shape:
        return None

    def describe(identity):
        revision = f" (revision {identity['revision']})" if identity.get("revision") else ""
        return f"{identity.get('name')!r}{revision}"

    return (
        f"adapter {manifest.get('language')!r} at {manifest['path']!r} was trained for base model "
        f"{describe(trained)}, not for {describe(current)}"
    )


def find_adapter(loaded, language: str) -> dict:
    """The manifest of the installed adapter for `language` that fits the loaded base model.

    Raises:
        AdapterError: no such adapter (the message lists the installed
            languages), or only adapters trained for another base model.
    """
    check_language(language)
    refusals = []
    for root in search_dirs():
        directory = _inside(root, language)
        if not (directory / MANIFEST_FILE).is_file():
            continue
        manifest = read_manifest(directory)
        problem = _mismatch(manifest, loaded)
        if problem is None:
            return manifest
        refusals.append(problem)
    if refusals:
        raise AdapterError(refusals[0])
    available = ", ".join(languages(base_name(loaded)))
    raise AdapterError(
        f"no adapter for language {language!r} and model {base_name(loaded)!r}; installed: {available} "
        f"(registry: {str(registry_dir())!r}, set {REGISTRY_ENV} to change it)"
    )


def _check_files(directory: Path) -> None:
    if not (directory / WEIGHTS_FILE).is_file():
        raise AdapterError(
            f"adapter folder {str(directory)!r} has no {WEIGHTS_FILE}: adapters load as safetensors only"
        )
    for name in ("adapter_config.json", "tokenizer_config.json"):
        if not (directory / name).is_file():
            raise AdapterError(f"adapter folder {str(directory)!r} has no {name}")


def check_adapter_files(directory: Path) -> None:
    """Checks that an adapter's files are present and readable before any model is changed.

    Raises:
        AdapterError: a missing file, a truncated or corrupt safetensors
            file, an unreadable adapter config or tokenizer; the file is named.
    """
    from safetensors import SafetensorError, safe_open

    _check_files(directory)
    weights = directory / WEIGHTS_FILE
    try:
        with safe_open(str(weights), framework="pt") as handle:
            for key in handle.keys():
                handle.get_tensor(key)
    except (SafetensorError, OSError, ValueError) as error:
        raise AdapterError(f"adapter weights {str(weights)!r} cannot be read ({error})") from None
    config_path = directory / "adapter_config.json"
    try:
        config = json.loads(config_path.read_text())
        problem = None if isinstance(config, dict) else "not a JSON object"
        if problem is None and config.get("peft_type") != "LORA":
            problem = f"peft_type must be 'LORA', got {config.get('peft_type')!r}"
        if problem is None and not isinstance(config.get("r"), int):
            problem = f"'r' must be an integer, got {config.get('r')!r}"
        if problem is None and not config.get("target_modules"):
            problem = "no target_modules"
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        problem = str(error)
    if problem:
        raise AdapterError(f"adapter config {str(config_path)!r} is broken: {problem}")
    try:
        _load_tokenizer(directory)
    except Exception as error:  # tokenizers raise several types for a bad file
        raise AdapterError(f"adapter tokenizer in {str(directory)!r} cannot be loaded ({error})") from None


# ---------------------------------------------------------------------------------------------
# Tokenizer


def _cased_tokenizer(base_tokenizer, vocab: dict[str, int]):
    from transformers import BertTokenizerFast

    specials = {
        name: getattr(base_tokenizer, name)
        for name in ("unk_token", "sep_token", "pad_token", "cls_token", "mask_token", "bos_token")
        if getattr(base_tokenizer, name, None)
    }
    return BertTokenizerFast(
        vocab=dict(vocab),
        do_lower_case=False,
        strip_accents=False,
        tokenize_chinese_chars=True,
        model_max_length=base_tokenizer.model_max_length,
        **specials,
    )


def _words(tokenizer, text: str) -> list[str]:
    backend = tokenizer.backend_tokenizer
    return [w for w, _ in backend.pre_tokenizer.pre_tokenize_str(backend.normalizer.normalize_str(text))]


def build_tokenizer(base_tokenizer, first_new_id: int, captions: list[str], max_added_tokens: int, min_count: int = 2):
    """A cased, accent-keeping tokenizer: the base vocabulary plus what `captions` need.

    Words the base vocabulary cannot write become whole tokens when they occur
    at least `min_count` times; rarer ones are spelt with character tokens
    ("X" and "##X"). New ids start at `first_new_id`.

    Returns:
        (tokenizer, new tokens in id order)
    """
    vocab = dict(base_tokenizer.get_vocab())
    probe = _cased_tokenizer(base_tokenizer, vocab)
    unk = probe.unk_token
    counts = Counter(w for caption in captions for w in _words(probe, caption))
    model = probe.backend_tokenizer.model
    uncovered = [(w, n) for w, n in counts.items() if unk in [t.value for t in model.tokenize(w)]]
    uncovered.sort(key=lambda item: (-item[1], item[0]))
    whole = [w for w, n in uncovered if n >= min_count]
    pieces = []
    for word, n in uncovered:
        if n < min_count:
            pieces += [word[0]] + [f"##{c}" for c in word[1:]]
    new_tokens = []
    for token in whole + sorted(set(pieces), key=pieces.index):
        if token not in vocab and token not in new_tokens:
            new_tokens.append(token)
    if len(new_tokens) > max_added_tokens:
        # Characters first: they keep every caption writable when whole words do not fit.
        chars = [t for t in new_tokens if t in pieces]
        words = [t for t in new_tokens if t not in pieces]
        new_tokens = (chars + words)[:max_added_tokens]
    for offset, token in enumerate(new_tokens):
        vocab[token] = first_new_id + offset
    return _cased_tokenizer(base_tokenizer, vocab), new_tokens


def roundtrip_rate(tokenizer, captions: list[str]) -> float:
    """Share of captions that decode back exactly (case, accents, script) after encoding."""
    if not captions:
        return 1.0
    ids = tokenizer(captions)["input_ids"]
    decoded = tokenizer.batch_decode(ids, skip_special_tokens=True)
    return sum(d.strip() == c.strip() for d, c in zip(decoded, captions)) / len(captions)


# ---------------------------------------------------------------------------------------------
# Training data


def pairs_from_dataset(samples, caption_field: str) -> list[tuple[str, str]]:
    """(filepath, caption) pairs of the samples whose `caption_field` holds a non-empty string."""
    if not samples.has_field(caption_field):
        raise AdapterError(f"the samples have no field {caption_field!r}")
    paths, texts = samples.values(["filepath", caption_field])
    return [(p, t.strip()) for p, t in zip(paths, texts) if isinstance(t, str) and t.strip()]


_IMAGE_KEYS = ("image", "filepath", "file", "filename", "path")


def pairs_from_folder(images_dir: str | os.PathLike, captions_file: str | os.PathLike) -> list[tuple[str, str]]:
    """(filepath, caption) pairs from a folder of images and a CSV or JSONL file of captions.

    Each row names an image (column or key `image`, `filepath`, `file`,
    `filename` or `path`; relative to `images_dir`) and its `caption`.
    """
    images_dir, captions_file = Path(images_dir), Path(captions_file)
    if not images_dir.is_dir():
        raise AdapterError(f"images folder {str(images_dir)!r} does not exist")
    if not captions_file.is_file():
        raise AdapterError(f"captions file {str(captions_file)!r} does not exist")
    if captions_file.suffix.lower() == ".csv":
        with captions_file.open(newline="", encoding="utf-8") as handle:
            rows = list(csv.DictReader(handle))
    elif captions_file.suffix.lower() in (".jsonl", ".ndjson"):
        rows = []
        for number, line in enumerate(captions_file.read_text(encoding="utf-8").splitlines(), 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as error:
                    raise AdapterError(f"{str(captions_file)!r} line {number}: {error}") from None
    else:
        raise AdapterError(f"captions file must be .csv or .jsonl, got {str(captions_file)!r}")
    pairs = []
    for number, row in enumerate(rows, 1):
        key = next((k for k in _IMAGE_KEYS if row.get(k)), None)
        caption = row.get("caption")
        if key is None or not isinstance(caption, str) or not caption.strip():
            raise AdapterError(
                f"{str(captions_file)!r} row {number} needs an image ({'/'.join(_IMAGE_KEYS)}) and a caption"
            )
        path = (images_dir / row[key]).resolve()
        if not path.is_file():
            raise AdapterError(f"{str(captions_file)!r} row {number}: image {str(path)!r} does not exist")
        pairs.append((str(path), caption.strip()))
    return pairs


# ---------------------------------------------------------------------------------------------
# Training


@dataclasses.dataclass
class AdapterTrainingSettings:
    """How a language adapter trains.

    Attributes:
        rank: LoRA rank (8).
        alpha: LoRA scaling numerator; the update is scaled by alpha / rank (16).
        dropout: LoRA dropout (0.0).
        learning_rate: peak AdamW learning rate, after a short warm-up,
            cosine-decayed (0.002).
        epochs: most passes over the training split (30).
        batch_size: image-caption pairs per step (64).
        validation_fraction: share of pairs held out, in (0, 0.5] (0.1).
        max_validation: at most this many held-out pairs (1000).
        patience: stop after this many epochs without a better held-out
            loss (3).
        max_added_tokens: at most this many new tokens (4000).
        min_token_count: a word the base vocabulary cannot write becomes one
            token when it occurs this often, else it is spelt in characters (2).
        seed: data split, order and initialisation seed (0).
    """

    rank: int = 8
    alpha: float = 16.0
    dropout: float = 0.0
    learning_rate: float = 2e-3
    epochs: int = 30
    batch_size: int = 64
    validation_fraction: float = 0.1
    max_validation: int = 1000
    patience: int = 3
    max_added_tokens: int = 4000
    min_token_count: int = 2
    seed: int = 0

    def __post_init__(self):
        if not 1 <= self.rank <= 256:
            raise ValueError(f"`rank` must be in 1..256, got {self.rank}")
        if self.alpha <= 0:
            raise ValueError(f"`alpha` must be > 0, got {self.alpha}")
        if not 0 <= self.dropout < 1:
            raise ValueError(f"`dropout` must be in [0, 1), got {self.dropout}")
        if not 0 < self.learning_rate < 1:
            raise ValueError(f"`learning_rate` must be in (0, 1), got {self.learning_rate}")
        if self.epochs < 1:
            raise ValueError(f"`epochs` must be >= 1, got {self.epochs}")
        if not 1 <= self.batch_size <= 4096:
            raise ValueError(f"`batch_size` must be in 1..4096, got {self.batch_size}")
        if not 0 < self.validation_fraction <= 0.5:
            raise ValueError(f"`validation_fraction` must be in (0, 0.5], got {self.validation_fraction}")
        if self.max_validation < 1:
            raise ValueError(f"`max_validation` must be >= 1, got {self.max_validation}")
        if self.patience < 1:
            raise ValueError(f"`patience` must be >= 1, got {self.patience}")
        if self.max_added_tokens < 0:
            raise ValueError(f"`max_added_tokens` must be >= 0, got {self.max_added_tokens}")
        if self.min_token_count < 1:
            raise ValueError(f"`min_token_count` must be >= 1, got {self.min_token_count}")


class _ImageFeatures:
    """The frozen vision encoder's output per image, cached in memory when it fits."""

    CACHE_BYTES = 2 << 30

    def __init__(self, model, preprocess, paths: list[str], device: str, batch_size: int, report):
        import torch

        self.model, self.preprocess, self.paths, self.device = model, preprocess, paths, device
        self.batch_size = batch_size
        vision = model.config.vision_config
        tokens = (vision.image_size // vision.patch_size) ** 2 + 1
        self.cache = None
        if len(paths) * tokens * vision.hidden_size * 4 <= self.CACHE_BYTES:
            chunks = []
            for start in range(0, len(paths), 256):
                chunks.append(self._encode(range(start, min(start + 256, len(paths)))).cpu())
                report(min(start + 256, len(paths)), len(paths))
            self.cache = torch.cat(chunks) if chunks else None

    def _encode(self, indices):
        import numpy as np
        import torch

        from fiftyone_blip.engine import default_workers

        paths = [self.paths[i] for i in indices]
        workers = max(1, min(default_workers(), len(paths)))
        if workers > 1:
            from concurrent.futures import ThreadPoolExecutor

            with ThreadPoolExecutor(workers) as pool:
                arrays = list(pool.map(lambda p: self.preprocess(p)[0], paths))
        else:
            arrays = [self.preprocess(p)[0] for p in paths]
        pixels = torch.from_numpy(np.stack(arrays)).to(self.device)
        with torch.no_grad():
            return self.model.vision_model(pixel_values=pixels).last_hidden_state

    def __call__(self, indices):
        import torch

        if self.cache is not None:
            return self.cache[torch.as_tensor(indices)].to(self.device)
        return self._encode(list(indices))


def _split(pairs, settings: AdapterTrainingSettings):
    import random

    order = list(range(len(pairs)))
    random.Random(settings.seed).shuffle(order)
    held = min(settings.max_validation, max(1, round(len(pairs) * settings.validation_fraction)))
    return [pairs[i] for i in order[held:]], [pairs[i] for i in order[:held]]


def _lr_at(step: int, total: int, peak: float) -> float:
    import math

    warmup = max(1, min(100, total // 20))
    if step < warmup:
        return peak * (step + 1) / warmup
    return peak * 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))


def _encode_captions(tokenizer, captions: list[str], bos: int):
    batch = tokenizer(captions, padding="longest", truncation=True, return_tensors="pt")
    ids = batch["input_ids"].clone()
    ids[:, 0] = bos  # BLIP's decoder starts from [DEC], not [CLS]
    return ids, batch["attention_mask"]


def _progress_reporter(progress, description: str):
    """A callable (done, total) from `progress`: True (a bar), False or a callable."""
    if callable(progress):
        return progress, lambda: None
    if not progress:
        return (lambda done, total: None), lambda: None
    from tqdm.auto import tqdm

    bar = {}

    def report(done, total):
        if "bar" not in bar:
            bar["bar"] = tqdm(total=total, desc=description, unit="step")
        bar["bar"].total = total
        bar["bar"].n = done
        bar["bar"].refresh()

    return report, lambda: bar.get("bar") and bar["bar"].close()


def _greedy_captions(model, tokenizer, features, indices, max_new_tokens: int, batch_size: int = 256):
    import torch

    text = model.config.text_config
    out = []
    for start in range(0, len(indices), batch_size):
        embeds = features(indices[start : start + batch_size])
        ids = torch.full((embeds.shape[0], 1), text.bos_token_id, dtype=torch.long, device=embeds.device)
        with torch.no_grad():
            sequences = model.text_decoder.generate(
                input_ids=ids,
                eos_token_id=text.sep_token_id,
                pad_token_id=text.pad_token_id,
                encoder_hidden_states=embeds,
                encoder_attention_mask=torch.ones(embeds.shape[:2], dtype=torch.long, device=embeds.device),
                max_new_tokens=max_new_tokens,
                do_sample=False,
                num_beams=1,
            )
        out += [t.strip() for t in tokenizer.batch_decode(sequences[:, 1:], skip_special_tokens=True)]
    return out


def _file_digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def train_adapter(
    pairs: list[tuple[str, str]],
    language: str,
    model: str | None = None,
    out: str | os.PathLike | None = None,
    settings: AdapterTrainingSettings | None = None,
    device: str = "auto",
    overwrite: bool = False,
    threads: int | None = None,
    progress=True,
    log=print,
) -> dict:
    """Trains a LoRA language adapter on the text decoder from (image path, caption) pairs.

    A held-out split (`settings.validation_fraction`) measures the loss after
    every epoch; training stops when it has not improved for
    `settings.patience` epochs and keeps the best epoch's weights. Greedy
    exact match on the held-out split is measured at the end.

    Args:
        pairs: (image path, caption) pairs, e.g. from `pairs_from_dataset` or
            `pairs_from_folder`.
        language: the language code the adapter is saved under ("de").
        model: the base captioner: hub id, local directory or "shapes-tiny"
            (None: Salesforce/blip-image-captioning-base).
        out: the adapter folder (None: `<registry>/<language>`).
        settings: an `AdapterTrainingSettings` (None: its defaults).
        device: "auto", "cpu", "cuda" or "mps" ("auto").
        overwrite: replace an existing adapter folder.
        threads: CPU threads for torch (None: torch's default). On a busy
            machine one thread can beat two: small matrices gain little from a
            second thread, and a thread that waits for a descheduled partner
            spins.
        progress: True for a progress bar, False for none, or a callable
            `progress(done, total)` over training steps.
        log: called with one line per epoch (print).

    Returns:
        the manifest (also written to `out/manifest.json`), with `path`.

    Raises:
        AdapterError: bad language, too few pairs, an existing folder without
            `overwrite`, or an adapter larger than 5% of the base model.
        ModelLoadError: the base model cannot be loaded.
    """
    import torch

    from fiftyone_blip import models
    from fiftyone_blip.images import Preprocessor

    check_language(language)
    if language == BASE_LANGUAGE:
        raise AdapterError(f"{BASE_LANGUAGE!r} is the base model's own language: it needs no adapter")
    settings = settings or AdapterTrainingSettings()
    if len(pairs) < 2:
        raise AdapterError(f"training needs at least 2 image-caption pairs, got {len(pairs)}")
    target = Path(out).expanduser() if out is not None else _inside(registry_dir(), language)
    if target.exists() and any(target.iterdir()) and not overwrite:
        raise AdapterError(f"adapter folder {str(target)!r} exists; pass overwrite to replace it")

    if threads is not None:
        if threads < 1:
            raise AdapterError(f"`threads` must be >= 1, got {threads}")
        torch.set_num_threads(threads)
    wall0, cpu0 = time.time(), time.process_time()
    name, local = models.resolve_name(model, "caption")
    resolved_device = models.resolve_device(device)
    # A private copy: training resizes embeddings and injects layers, which
    # must not leak into the cached model that captioning uses.
    loaded = models._load.__wrapped__(name, local, "caption", resolved_device, "float32", None, "sdpa")
    net = loaded.model
    base = base_identity(loaded)
    base_parameters = sum(p.numel() for p in net.parameters())
    tokenizer = loaded.processor.tokenizer
    torch.manual_seed(settings.seed)

    train_pairs, val_pairs = _split(pairs, settings)
    first_new_id = max(base["vocab_size"], max(tokenizer.get_vocab().values()) + 1)
    tokenizer, new_tokens = build_tokenizer(
        tokenizer, first_new_id, [c for _, c in train_pairs], settings.max_added_tokens, settings.min_token_count
    )
    new_ids = list(range(first_new_id, first_new_id + len(new_tokens)))
    if new_ids:
        net.text_decoder.resize_token_embeddings(new_ids[-1] + 1, mean_resizing=False)
    peft_model = _wrap_for_training(net, settings, new_ids)
    trainable = sum(p.numel() for p in peft_model.parameters() if p.requires_grad)
    ratio = trainable / base_parameters
    if ratio > MAX_SIZE_RATIO:
        raise AdapterError(
            f"the adapter would hold {trainable:,} parameters, {ratio:.1%} of the base model's {base_parameters:,} "
            f"(limit {MAX_SIZE_RATIO:.0%}): lower `rank` ({settings.rank}) or `max_added_tokens` "
            f"({settings.max_added_tokens}, {len(new_tokens)} needed)"
        )
    log(
        f"adapter {language!r} on {base['name']!r}: {len(train_pairs)} training and {len(val_pairs)} held-out pairs, "
        f"{len(new_tokens)} new tokens, {trainable:,} trainable parameters ({ratio:.2%} of {base_parameters:,})"
    )

    report, close = _progress_reporter(progress, f"adapter {language}")
    preprocess = Preprocessor(loaded.processor.image_processor, loaded.image_size, "squash")
    paths = [p for p, _ in train_pairs] + [p for p, _ in val_pairs]
    features = _ImageFeatures(net, preprocess, paths, resolved_device, settings.batch_size, lambda d, t: None)
    bos = net.config.text_config.bos_token_id
    train_ids, train_mask = _encode_captions(tokenizer, [c for _, c in train_pairs], bos)
    val_ids, val_mask = _encode_captions(tokenizer, [c for _, c in val_pairs], bos)
    val_index = list(range(len(train_pairs), len(paths)))

    def batch_loss(ids, mask, embeds):
        width = int(mask.sum(1).max())
        ids, mask = ids[:, :width].to(resolved_device), mask[:, :width].to(resolved_device)
        labels = ids.masked_fill(mask == 0, -100)
        out = net.text_decoder(
            input_ids=ids,
            attention_mask=mask,
            encoder_hidden_states=embeds,
            labels=labels,
            reduction="mean",
        )
        return out.loss

    def validation_loss():
        peft_model.eval()
        total, count = 0.0, 0
        with torch.no_grad():
            for start in range(0, len(val_pairs), 256):
                rows = slice(start, start + 256)
                embeds = features(val_index[rows])
                total += float(batch_loss(val_ids[rows], val_mask[rows], embeds)) * embeds.shape[0]
                count += embeds.shape[0]
        return total / max(count, 1)

    trainable_params = [p for p in peft_model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable_params, lr=settings.learning_rate, weight_decay=0.0)
    steps_per_epoch = max(1, len(train_pairs) // settings.batch_size)
    total_steps = steps_per_epoch * settings.epochs
    generator = torch.Generator().manual_seed(settings.seed)
    best = {"loss": float("inf"), "epoch": 0, "state": None}
    history, step, stale = [], 0, 0
    for epoch in range(settings.epochs):
        peft_model.train()
        order = torch.randperm(len(train_pairs), generator=generator)
        losses = []
        for b in range(steps_per_epoch):
            idx = order[b * settings.batch_size : (b + 1) * settings.batch_size]
            for group in optimizer.param_groups:
                group["lr"] = _lr_at(step, total_steps, settings.learning_rate)
            loss = batch_loss(train_ids[idx], train_mask[idx], features(idx.tolist()))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(trainable_params, 1.0)
            optimizer.step()
            losses.append(loss.item())
            step += 1
            report(step, total_steps)
        val = validation_loss()
        history.append(
            {"epoch": epoch + 1, "train_loss": round(sum(losses) / len(losses), 5), "val_loss": round(val, 5)}
        )
        log(
            f"epoch {epoch + 1}/{settings.epochs}: train loss {history[-1]['train_loss']:.4f}, "
            f"held-out loss {val:.4f} ({time.time() - wall0:.0f} s)"
        )
        if val < best["loss"] - 1e-4:
            best = {"loss": val, "epoch": epoch + 1, "state": [p.detach().clone() for p in trainable_params]}
            stale = 0
        else:
            stale += 1
            if stale >= settings.patience:
                log(f"early stop: no better held-out loss for {settings.patience} epochs")
                break
    close()
    with torch.no_grad():
        for p, saved in zip(trainable_params, best["state"]):
            p.copy_(saved)
    peft_model.eval()
    val_captions = [c for _, c in val_pairs]
    longest = int(val_mask.sum(1).max()) + 8
    predicted = _greedy_captions(net, tokenizer, features, val_index, max_new_tokens=longest)
    exact = sum(p == c for p, c in zip(predicted, val_captions)) / len(val_captions)
    wall, cpu = time.time() - wall0, time.process_time() - cpu0
    log(f"held-out greedy exact match {exact:.4f} ({len(val_captions)} pairs); {wall:.0f} s wall, {cpu:.0f} s CPU")

    manifest = {
        "format_version": FORMAT_VERSION,
        "language": language,
        "base_model": base,
        "tokenizer": {
            "added_tokens": len(new_tokens),
            "first_added_id": first_new_id,
            "do_lower_case": False,
            "strip_accents": False,
            "roundtrip_train": round(roundtrip_rate(tokenizer, [c for _, c in train_pairs]), 4),
            "roundtrip_held_out": round(roundtrip_rate(tokenizer, val_captions), 4),
        },
        "data": {"train_pairs": len(train_pairs), "held_out_pairs": len(val_pairs)},
        "metrics": {
            "held_out_loss": round(best["loss"], 5),
            "held_out_exact_match": round(exact, 4),
            "best_epoch": best["epoch"],
            "epochs_run": len(history),
        },
        "parameters": {"trainable": trainable, "base": base_parameters, "ratio": round(ratio, 5)},
        "training": {
            "settings": dataclasses.asdict(settings),
            "wall_seconds": round(wall, 1),
            "cpu_seconds": round(cpu, 1),
            "torch_threads": torch.get_num_threads(),
            "device": resolved_device,
            "history": history,
        },
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    _save(peft_model, tokenizer, manifest, target)
    manifest["path"] = str(target)
    return manifest


def _lora_config(settings: AdapterTrainingSettings, new_ids: list[int], inference: bool = False):
    from peft import LoraConfig

    return LoraConfig(
        r=settings.rank,
        lora_alpha=settings.alpha,
        lora_dropout=settings.dropout,
        target_modules=TARGET_MODULES,
        trainable_token_indices={EMBEDDINGS: new_ids} if new_ids else None,
        inference_mode=inference,
    )


def _wrap_for_training(net, settings, new_ids):
    import warnings

    from peft import get_peft_model

    with warnings.catch_warnings():
        # peft warns that the resized vocabulary is saved with the adapter; it is
        # not: only the new rows are (save_embedding_layers=False below).
        warnings.simplefilter("ignore")
        return get_peft_model(net, _lora_config(settings, new_ids), adapter_name="default")


def _save(peft_model, tokenizer, manifest: dict, target: Path) -> None:
    import warnings

    target.parent.mkdir(parents=True, exist_ok=True)
    # peft records the base's local path (a machine-specific one for bundled or
    # local models); the manifest's name is the one adapters are matched by.
    config = peft_model.peft_config["default"]
    config.base_model_name_or_path = manifest["base_model"]["name"]
    config.revision = manifest["base_model"]["revision"]
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            peft_model.save_pretrained(staging, safe_serialization=True, save_embedding_layers=False)
        (staging / "README.md").unlink(missing_ok=True)  # peft's empty model-card template
        tokenizer.save_pretrained(staging)
        manifest["files"] = {WEIGHTS_FILE: _file_digest(staging / WEIGHTS_FILE)}
        manifest["size_bytes"] = (staging / WEIGHTS_FILE).stat().st_size
        (staging / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2, ensure_ascii=False) + "\n")
        if target.exists():
            shutil.rmtree(target)
        os.replace(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


# ---------------------------------------------------------------------------------------------
# Inference: several adapters on one base model


class _AdapterSession:
    """The adapters attached to one loaded model, and which one is active."""

    def __init__(self, loaded, capacity: int):
        self.loaded = loaded
        self.lock = threading.RLock()
        self.peft_model = None
        self.manifests: dict[str, dict] = {}
        self.tokenizers: dict[str, object] = {}
        net = loaded.model
        # what `undo` restores if the first adapter fails to load
        self._original_modules = dict(net.named_modules())
        self._original_rows = net.text_decoder.get_input_embeddings().weight.shape[0]
        self._had_base_vocab = hasattr(net, "_fiftyone_blip_base_vocab_size")
        self.base_vocab = _base_vocab_size(net)
        net._fiftyone_blip_base_vocab_size = self.base_vocab
        if capacity > net.text_decoder.get_input_embeddings().weight.shape[0]:
            net.text_decoder.resize_token_embeddings(capacity, mean_resizing=False)
        self.capacity = net.text_decoder.get_input_embeddings().weight.shape[0]
        self.visible = self.base_vocab
        # Rows beyond the active tokenizer (other languages' tokens) must never be
        # generated nor take probability mass: their logits are set to the minimum.
        self._hook = net.text_decoder.cls.register_forward_hook(self._mask_logits)

    def undo(self) -> None:
        """Puts the model back as it was before this session (after its first adapter failed to load)."""
        net = self.loaded.model
        self._hook.remove()
        # peft replaces target layers by wrappers around the originals: put the originals back
        for name, module in self._original_modules.items():
            if not name:
                continue
            parent_name, _, attribute = name.rpartition(".")
            parent = self._original_modules[parent_name]
            if getattr(parent, attribute, None) is not module:
                setattr(parent, attribute, module)
        if hasattr(net, "peft_config"):
            del net.peft_config
        if net.text_decoder.get_input_embeddings().weight.shape[0] != self._original_rows:
            net.text_decoder.resize_token_embeddings(self._original_rows, mean_resizing=False)
        if not self._had_base_vocab:
            del net._fiftyone_blip_base_vocab_size

    def _mask_logits(self, module, inputs, output):
        if self.visible < output.shape[-1]:
            import torch

            output[..., self.visible :] = torch.finfo(output.dtype).min
        return output

    def attach(self, language: str, manifest: dict) -> None:
        from peft import PeftModel

        directory = Path(manifest["path"])
        _check_files(directory)
        needed = manifest["tokenizer"]["first_added_id"] + manifest["tokenizer"]["added_tokens"]
        if needed > self.capacity:
            raise AdapterError(
                f"adapter {language!r} needs {needed} token rows but the loaded model was extended to "
                f"{self.capacity} when its first adapter loaded; restart the process to load it"
            )
        tokenizer = _load_tokenizer(directory)
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if self.peft_model is None:
                self.peft_model = PeftModel.from_pretrained(
                    self.loaded.model, str(directory), adapter_name=language, is_trainable=False
                )
            else:
                try:
                    self.peft_model.load_adapter(str(directory), adapter_name=language, is_trainable=False)
                except Exception:
                    if language in self.peft_model.peft_config:  # half loaded: the others stay as they were
                        self.peft_model.delete_adapter(language)
                    raise
        self.peft_model.eval()
        self.manifests[language] = manifest
        self.tokenizers[language] = tokenizer

    @contextlib.contextmanager
    def active(self, language: str | None):
        with self.lock:
            if language is None or language == BASE_LANGUAGE:
                self.visible = self.base_vocab
                context = self.peft_model.disable_adapter() if self.peft_model is not None else contextlib.nullcontext()
            else:
                self.peft_model.set_adapter(language)
                self.visible = len(self.tokenizers[language])
                context = contextlib.nullcontext()
            try:
                with context:
                    yield
            finally:
                self.visible = self.base_vocab


def _load_tokenizer(directory: Path):
    from transformers import BertTokenizerFast

    return BertTokenizerFast.from_pretrained(str(directory), trust_remote_code=False)


_SESSIONS: dict[int, _AdapterSession] = {}
_SESSIONS_LOCK = threading.Lock()


def session_for(loaded, language: str | None = None) -> _AdapterSession | None:
    """The adapter session of a loaded model, loading `language`'s adapter if needed.

    Returns None for English on a model that never had an adapter attached.
    """
    if language is not None:
        check_language(language)
    with _SESSIONS_LOCK:
        session = _SESSIONS.get(id(loaded.model))
        if session is not None and session.loaded.model is not loaded.model:
            session = None  # a stale entry: the id was reused
        if language is None or language == BASE_LANGUAGE:
            return session
        if loaded.dtype == "int8":
            raise AdapterError("language adapters need float weights; `dtype` 'int8' quantizes them away")
        if session is not None and language in session.manifests:
            return session
        manifest = find_adapter(loaded, language)
        check_adapter_files(Path(manifest["path"]))  # before the model is touched
        created = session is None
        if session is None:
            # Size the embedding once for every installed adapter of this base, so
            # later ones load onto the same model without resizing it again.
            rows = [
                m["tokenizer"]["first_added_id"] + m["tokenizer"]["added_tokens"]
                for m in installed_adapters(base_name(loaded))
                if _mismatch(m, loaded) is None
            ]
            needed = manifest["tokenizer"]["first_added_id"] + manifest["tokenizer"]["added_tokens"]
            session = _AdapterSession(loaded, max([needed, *rows]))
            _SESSIONS[id(loaded.model)] = session
        try:
            session.attach(language, manifest)
        except Exception as error:
            if created:
                # the cached model goes back to exactly what it was: no adapter layers, hook or rows
                _SESSIONS.pop(id(loaded.model), None)
                session.undo()
            if isinstance(error, AdapterError):
                raise
            raise AdapterError(f"adapter {language!r} at {manifest['path']!r} could not be loaded: {error}") from None
        return session


def prepare(loaded, language: str | None):
    """For captioning: (tokenizer, identity, activation context factory) of `language` on `loaded`.

    The tokenizer is None for English (the model's own); the identity goes in
    the run fingerprint so that each language is its own result.
    """
    session = session_for(loaded, language)
    if language is None or language == BASE_LANGUAGE:

        def activate():
            return session.active(None) if session is not None else contextlib.nullcontext()

        return None, {}, activate
    manifest = session.manifests[language]
    identity = {"language": language, "adapter": manifest.get("files", {}).get(WEIGHTS_FILE)}
    return session.tokenizers[language], identity, lambda: session.active(language)
