"""Training a language adapter: settings, the frozen image features, the LoRA loop, saving."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

from fiftyone_blip.adapters.data import pairs_from_dataset, pairs_from_folder
from fiftyone_blip.adapters.registry import (
    BASE_LANGUAGE,
    BUNDLED_ADAPTERS_DIR,
    FORMAT_VERSION,
    MANIFEST_FILE,
    MAX_SIZE_RATIO,
    WEIGHTS_FILE,
    AdapterError,
    adapter_dir,
    base_identity,
    check_language,
    read_manifest,
    registry_dir,
)
from fiftyone_blip.adapters.tokenizer import build_tokenizer, roundtrip_rate
from fiftyone_blip.progress import reporter
from fiftyone_blip.settings import DEVICES, SDK_CLI, Settings, check_revision, revision_setting, setting

EMBEDDINGS = "text_decoder.bert.embeddings.word_embeddings"
# peft has no default LoRA targets for BLIP v1. These are the text decoder's
# self-attention, cross-attention, feed-forward and LM-head transform layers;
# nothing in the vision model matches.
TARGET_MODULES = (
    r"text_decoder\.(?:bert\.encoder\.layer\.\d+\.(?:(?:attention|crossattention)\.(?:self\.(?:query|key|value)"
    r"|output\.dense)|intermediate\.dense|output\.dense)|cls\.predictions\.transform\.dense)"
)


@dataclasses.dataclass
class AdapterTrainingSettings(Settings):
    """How a language adapter trains (stored in its manifest)."""

    rank: int = setting(8, "LoRA rank", label="LoRA rank", min=1, max=256)
    alpha: float = setting(
        16.0,
        "LoRA scaling numerator; the update is scaled by alpha / rank",
        label="LoRA alpha",
        min=0,
        min_exclusive=True,
    )
    dropout: float = setting(0.0, "LoRA dropout, in [0, 1)", label="LoRA dropout")
    learning_rate: float = setting(
        2e-3, "peak AdamW learning rate, after a short warm-up, cosine-decayed", cli_flags=("--lr",)
    )
    epochs: int = setting(
        30, "most passes over the training split (early stopping may end sooner)", label="Most epochs", min=1
    )
    batch_size: int = setting(64, "image-caption pairs per step", min=1, max=4096)
    validation_fraction: float = setting(
        0.1, "share of pairs held out, in (0, 0.5]", min=0, max=0.5, min_exclusive=True
    )
    max_validation: int = setting(1000, "most held-out pairs", min=1)
    patience: int = setting(3, "stop after this many epochs without a better held-out loss", min=1)
    max_added_tokens: int = setting(4000, "most new tokens", min=0)
    min_token_count: int = setting(
        2,
        "a word the base vocabulary cannot write becomes one token when it occurs this often, else it is spelt "
        "in characters",
        min=1,
    )
    seed: int = setting(0, "data split, order and initialisation seed")

    def __post_init__(self):
        super().__post_init__()
        # open bounds the declared checks do not express
        if not 0 <= self.dropout < 1:
            raise ValueError(f"`dropout` must be in [0, 1), got {self.dropout}")
        if not 0 < self.learning_rate < 1:
            raise ValueError(f"`learning_rate` must be in (0, 1), got {self.learning_rate}")


@dataclasses.dataclass
class AdapterJobSettings(Settings):
    """Where an adapter's data comes from, what it adapts and where it goes.

    The data is either a FiftyOne dataset or view (`samples`, with
    `caption_field`) or a folder of images with a captions file.
    """

    caption_field: str | None = setting(None, "the samples' caption field, e.g. caption_de", cli_flags=("-c",))
    images_dir: str | None = setting(
        None, "or: a folder of images (with `captions_file`)", cli_flags=("--images",), surfaces=SDK_CLI
    )
    captions_file: str | None = setting(
        None, "a .csv or .jsonl file of image,caption rows", cli_flags=("--captions",), surfaces=SDK_CLI
    )
    model: str | None = setting(
        None,
        "the base captioner: hub id, local directory or 'shapes-tiny' (None: Salesforce/blip-image-captioning-base)",
        label="Base model",
        cli_flags=("-m",),
        envvar="FIFTYONE_BLIP_CAPTION_MODEL",
    )
    revision: str | None = revision_setting()
    out: str | None = setting(
        None, "the adapter folder (None: <registry>/<language>)", cli_flags=("-o",), surfaces=SDK_CLI
    )
    device: str = setting("auto", "where training runs", choices=DEVICES, envvar="FIFTYONE_BLIP_DEVICE")
    threads: int | None = setting(None, "CPU threads for torch (None: torch's default)", min=1, surfaces=SDK_CLI)
    overwrite: bool = setting(
        False, "replace an installed adapter of this language", label="Replace an installed adapter of this language"
    )

    def __post_init__(self):
        super().__post_init__()
        check_revision(self.revision)


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
    revision: str | None = None,
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
        revision: the base model's hub revision: a branch, tag or commit
            (None: the default branch); recorded in the manifest.
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

    settings = settings or AdapterTrainingSettings()
    target = _check_request(pairs, language, out, overwrite)
    _set_threads(threads)
    clock = (time.time(), time.process_time())
    # A private copy: training resizes embeddings and injects layers, which
    # must not leak into the cached model that captioning uses.
    loaded = models.load_model(model, task="caption", device=device, dtype="float32", revision=revision, cached=False)
    torch.manual_seed(settings.seed)
    train_pairs, val_pairs = _split(pairs, settings)
    adapter = _new_adapter(loaded, settings, [c for _, c in train_pairs])
    log(
        f"adapter {language!r} on {adapter.base['name']!r}: {len(train_pairs)} training and {len(val_pairs)} "
        f"held-out pairs, {len(adapter.new_tokens)} new tokens, {adapter.trainable:,} trainable parameters "
        f"({adapter.ratio:.2%} of {adapter.base_parameters:,})"
    )
    data = _TrainingData(loaded, adapter.tokenizer, train_pairs, val_pairs, settings.batch_size)
    report, close = reporter(progress, f"adapter {language}", unit="step")
    try:
        best, history = _fit(adapter, data, settings, report, log, clock[0])
    finally:
        close()
    exact = _held_out_exact_match(adapter, data)
    wall, cpu = time.time() - clock[0], time.process_time() - clock[1]
    log(f"held-out greedy exact match {exact:.4f} ({len(val_pairs)} pairs); {wall:.0f} s wall, {cpu:.0f} s CPU")
    manifest = _manifest(language, adapter, data, settings, best, history, exact, (wall, cpu), loaded.device)
    _save(adapter.peft_model, adapter.tokenizer, manifest, target)
    manifest["path"] = str(target)
    return manifest


def _set_threads(threads: int | None) -> None:
    """Sets torch's CPU threads (None: torch's default)."""
    import torch

    if threads is not None:
        if threads < 1:
            raise AdapterError(f"`threads` must be >= 1, got {threads}")
        torch.set_num_threads(threads)


def _check_request(pairs, language: str, out, overwrite: bool) -> Path:
    """The adapter folder, after the checks that need no model."""
    check_language(language)
    if language == BASE_LANGUAGE:
        raise AdapterError(f"{BASE_LANGUAGE!r} is the base model's own language: it needs no adapter")
    if len(pairs) < 2:
        raise AdapterError(f"training needs at least 2 image-caption pairs, got {len(pairs)}")
    target = Path(out).expanduser() if out is not None else adapter_dir(registry_dir(), language)
    check_replaceable(target, overwrite)
    return target


def check_replaceable(target: Path, overwrite: bool) -> None:
    """Refuses an adapter folder that may not be written: anything but a new or empty folder, or,
    with `overwrite`, an adapter folder (its manifest reads). Nothing else is ever deleted."""
    if target.is_symlink() or (target.exists() and not target.is_dir()):
        raise AdapterError(f"{str(target)!r} is not a folder; it is left as it is: pick a new or empty folder")
    if not target.exists() or not any(target.iterdir()):
        return
    if not (target / MANIFEST_FILE).is_file():
        raise AdapterError(
            f"folder {str(target)!r} is not an adapter folder (no {MANIFEST_FILE}); it is left as it is: "
            "pick a new or empty folder"
        )
    if not overwrite:
        raise AdapterError(f"adapter folder {str(target)!r} exists; pass overwrite to replace it")
    read_manifest(target)  # a folder whose manifest does not read is no adapter to replace either


@dataclasses.dataclass
class _Adapter:
    """The base model with its new tokens and LoRA layers, ready to train."""

    net: object
    peft_model: object
    tokenizer: object
    base: dict
    first_new_id: int
    new_tokens: list
    trainable: int
    base_parameters: int

    @property
    def ratio(self) -> float:
        return self.trainable / self.base_parameters

    @property
    def trainable_params(self) -> list:
        return [p for p in self.peft_model.parameters() if p.requires_grad]


def _new_adapter(loaded, settings: AdapterTrainingSettings, train_captions: list[str]) -> _Adapter:
    """Adds the tokens the captions need and wraps the decoder in LoRA; refuses an adapter too large."""
    net = loaded.model
    base = base_identity(loaded)
    base_parameters = sum(p.numel() for p in net.parameters())
    tokenizer = loaded.processor.tokenizer
    first_new_id = max(base["vocab_size"], max(tokenizer.get_vocab().values()) + 1)
    tokenizer, new_tokens = build_tokenizer(
        tokenizer, first_new_id, train_captions, settings.max_added_tokens, settings.min_token_count
    )
    new_ids = list(range(first_new_id, first_new_id + len(new_tokens)))
    if new_ids:
        net.text_decoder.resize_token_embeddings(new_ids[-1] + 1, mean_resizing=False)
    peft_model = _wrap_for_training(net, settings, new_ids)
    trainable = sum(p.numel() for p in peft_model.parameters() if p.requires_grad)
    adapter = _Adapter(net, peft_model, tokenizer, base, first_new_id, new_tokens, trainable, base_parameters)
    if adapter.ratio > MAX_SIZE_RATIO:
        raise AdapterError(
            f"the adapter would hold {trainable:,} parameters, {adapter.ratio:.1%} of the base model's "
            f"{base_parameters:,} (limit {MAX_SIZE_RATIO:.0%}): lower `rank` ({settings.rank}) or "
            f"`max_added_tokens` ({settings.max_added_tokens}, {len(new_tokens)} needed)"
        )
    return adapter


class _TrainingData:
    """The pairs as model inputs: frozen image features by index, token ids and masks per split."""

    def __init__(self, loaded, tokenizer, train_pairs, val_pairs, batch_size: int):
        self.device = loaded.device
        self.train_pairs, self.val_pairs = train_pairs, val_pairs
        paths = [p for p, _ in train_pairs] + [p for p, _ in val_pairs]
        self.features = _ImageFeatures(
            loaded.model, loaded.preprocessor("squash"), paths, loaded.device, batch_size, lambda d, t: None
        )
        bos = loaded.model.config.text_config.bos_token_id
        self.train_ids, self.train_mask = _encode_captions(tokenizer, [c for _, c in train_pairs], bos)
        self.val_ids, self.val_mask = _encode_captions(tokenizer, [c for _, c in val_pairs], bos)
        self.val_index = list(range(len(train_pairs), len(paths)))

    def loss(self, net, ids, mask, embeds):
        """The decoder's mean token loss of a caption batch on its image features."""
        width = int(mask.sum(1).max())
        ids, mask = ids[:, :width].to(self.device), mask[:, :width].to(self.device)
        labels = ids.masked_fill(mask == 0, -100)
        out = net.text_decoder(
            input_ids=ids, attention_mask=mask, encoder_hidden_states=embeds, labels=labels, reduction="mean"
        )
        return out.loss

    def validation_loss(self, net) -> float:
        import torch

        total, count = 0.0, 0
        with torch.no_grad():
            for start in range(0, len(self.val_pairs), 256):
                rows = slice(start, start + 256)
                embeds = self.features(self.val_index[rows])
                total += float(self.loss(net, self.val_ids[rows], self.val_mask[rows], embeds)) * embeds.shape[0]
                count += embeds.shape[0]
        return total / max(count, 1)


def _fit(adapter: _Adapter, data: _TrainingData, settings, report, log, wall0: float):
    """AdamW with warm-up and cosine decay, early stopping on the held-out loss; keeps the best epoch's weights.

    Returns (best, history): best {"loss", "epoch", "state"} and one row per epoch.
    """
    import torch

    trainable_params = adapter.trainable_params
    optimizer = torch.optim.AdamW(trainable_params, lr=settings.learning_rate, weight_decay=0.0)
    steps_per_epoch = max(1, len(data.train_pairs) // settings.batch_size)
    total_steps = steps_per_epoch * settings.epochs
    generator = torch.Generator().manual_seed(settings.seed)
    best = {"loss": float("inf"), "epoch": 0, "state": None}
    history, step, stale = [], 0, 0
    for epoch in range(settings.epochs):
        adapter.peft_model.train()
        order = torch.randperm(len(data.train_pairs), generator=generator)
        losses = []
        for b in range(steps_per_epoch):
            idx = order[b * settings.batch_size : (b + 1) * settings.batch_size]
            for group in optimizer.param_groups:
                group["lr"] = _lr_at(step, total_steps, settings.learning_rate)
            loss = data.loss(adapter.net, data.train_ids[idx], data.train_mask[idx], data.features(idx.tolist()))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(trainable_params, 1.0)
            optimizer.step()
            losses.append(loss.item())
            step += 1
            report(step, total_steps)
        adapter.peft_model.eval()
        val = data.validation_loss(adapter.net)
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
    with torch.no_grad():
        for p, saved in zip(trainable_params, best["state"]):
            p.copy_(saved)
    adapter.peft_model.eval()
    return best, history


def _held_out_exact_match(adapter: _Adapter, data: _TrainingData) -> float:
    """The share of held-out captions that greedy decoding writes exactly."""
    captions = [c for _, c in data.val_pairs]
    longest = int(data.val_mask.sum(1).max()) + 8
    predicted = _greedy_captions(adapter.net, adapter.tokenizer, data.features, data.val_index, max_new_tokens=longest)
    return sum(p == c for p, c in zip(predicted, captions)) / len(captions)


def _manifest(language, adapter: _Adapter, data, settings, best, history, exact, times, device) -> dict:
    """What the adapter folder says about itself (manifest.json)."""
    import torch

    wall, cpu = times
    return {
        "format_version": FORMAT_VERSION,
        "language": language,
        "base_model": adapter.base,
        "tokenizer": {
            "added_tokens": len(adapter.new_tokens),
            "first_added_id": adapter.first_new_id,
            "do_lower_case": False,
            "strip_accents": False,
            "roundtrip_train": round(roundtrip_rate(adapter.tokenizer, [c for _, c in data.train_pairs]), 4),
            "roundtrip_held_out": round(roundtrip_rate(adapter.tokenizer, [c for _, c in data.val_pairs]), 4),
        },
        "data": {"train_pairs": len(data.train_pairs), "held_out_pairs": len(data.val_pairs)},
        "metrics": {
            "held_out_loss": round(best["loss"], 5),
            "held_out_exact_match": round(exact, 4),
            "best_epoch": best["epoch"],
            "epochs_run": len(history),
        },
        "parameters": {
            "trainable": adapter.trainable,
            "base": adapter.base_parameters,
            "ratio": round(adapter.ratio, 5),
        },
        "training": {
            "settings": dataclasses.asdict(settings),
            "wall_seconds": round(wall, 1),
            "cpu_seconds": round(cpu, 1),
            "torch_threads": torch.get_num_threads(),
            "device": device,
            "history": history,
        },
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def lora_config(settings: AdapterTrainingSettings, new_ids: list[int], inference: bool = False):
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
        return get_peft_model(net, lora_config(settings, new_ids), adapter_name="default")


def _save(peft_model, tokenizer, manifest: dict, target: Path) -> None:
    """Saves an adapter folder: what plain peft loads (weights, adapter_config.json, the tokenizer),
    the manifest fiftyone-blip matches adapters by, and a model card (README.md).

    Only the new tokens' rows are saved (`trainable_token_indices`); plain peft
    loads the folder with `AutoPeftModel.from_pretrained(folder)`, or onto a
    base model resized to the adapter's tokenizer (see `model_card`).
    """
    import warnings

    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            peft_model.save_pretrained(staging, safe_serialization=True, save_embedding_layers=False)
        tokenizer.save_pretrained(staging)
        manifest["files"] = {WEIGHTS_FILE: _file_digest(staging / WEIGHTS_FILE)}
        manifest["size_bytes"] = (staging / WEIGHTS_FILE).stat().st_size
        (staging / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2, ensure_ascii=False) + "\n")
        write_load_files(staging, manifest)
        if target.exists():
            check_replaceable(target, overwrite=True)  # again: the folder may have changed during training
            shutil.rmtree(target)
        os.replace(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def peft_base_reference(base: dict, directory: Path) -> str:
    """What `adapter_config.json` in `directory` names as the base: the hub id or local folder the
    adapter was trained on.

    A bundled base ("shapes-tiny") is named by its absolute path, so plain peft finds it from any
    working directory; inside the package's own adapters folder (the bundled adapters), by its
    path relative to the folder that holds `fiftyone_blip`, as the install location is not known
    there (`registry.bundled_dir` lists a copy that names it absolutely).
    """
    from fiftyone_blip import models

    name = base["name"]
    if name in models.BUNDLED:
        folder = models.BUNDLED[name]["caption"].resolve()
        if Path(directory).resolve().is_relative_to(BUNDLED_ADAPTERS_DIR.resolve()):
            return folder.relative_to(Path(models.__file__).resolve().parent.parent).as_posix()
        return str(folder)
    return name


def write_load_files(directory: Path, manifest: dict) -> None:
    """Writes what plain peft and a reader need beside the weights: the real base model (and its
    revision) in `adapter_config.json`, and the model card `README.md`.

    `refresh_adapter_folder` runs it on a folder saved earlier, without retraining.
    """
    config_path = directory / "adapter_config.json"
    config = json.loads(config_path.read_text())
    config["base_model_name_or_path"] = peft_base_reference(manifest["base_model"], directory)
    config["revision"] = manifest["base_model"].get("revision")
    config_path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    (directory / "README.md").write_text(model_card(manifest, config))


def refresh_adapter_folder(directory) -> None:
    """Rewrites an adapter folder's `adapter_config.json` base and `README.md` from its manifest.

    For folders saved by an earlier version (base named by alias, no card);
    the weights, tokenizer and manifest are left as they are.
    """
    directory = Path(directory)
    manifest = read_manifest(directory)
    manifest.pop("path", None)
    write_load_files(directory, manifest)


LANGUAGE_NAMES = {"de": "German", "ru": "Russian", "fr": "French", "es": "Spanish", "it": "Italian", "ja": "Japanese"}


# The model card's section on loading an adapter, with plain peft and with fiftyone-blip.
_LOADING = (
    "## Load it with plain peft",
    "",
    "```python",
    "from peft import AutoPeftModel",
    "",
    "# the base named in adapter_config.json, resized to this folder's tokenizer",
    'model = AutoPeftModel.from_pretrained("path/to/this/folder")',
    "```",
    "",
    "or onto a base model you load yourself (resize it to the adapter's tokenizer first):",
    "",
    "```python",
    'base.resize_token_embeddings(len(AutoTokenizer.from_pretrained("path/to/this/folder")))',
    'model = PeftModel.from_pretrained(base, "path/to/this/folder")',
    "```",
    "",
    "Caption with the base's image processor and decode with this folder's tokenizer:",
    "",
    "```python",
    'ids = model.generate(pixel_values=processor(images=image, return_tensors="pt").pixel_values, max_new_tokens=30)',
    "caption = tokenizer.decode(ids[0], skip_special_tokens=True)",
    "```",
    "",
    "With fiftyone-blip (`import fiftyone_blip as fb`): `fb.caption(dataset, model=..., language=...)`"
    " after installing the folder in the adapter registry.",
    "",
)


def model_card(manifest: dict, config: dict) -> str:
    """The adapter folder's README.md: base model, language, data, figures, and loading with plain peft."""
    base, language = manifest["base_model"], manifest["language"]
    reference = config["base_model_name_or_path"]
    metrics, data, tokens = manifest["metrics"], manifest["data"], manifest["tokenizer"]
    training = manifest.get("training", {})
    hub_base = "/" in reference and not Path(reference).exists() and reference.count("/") == 1
    front = ["---", "library_name: peft", f"language: {language}", "pipeline_tag: image-to-text"]
    if hub_base:
        front.append(f"base_model: {reference}")
    front += ["tags:", "- blip", "- lora", "- fiftyone-blip", "---", ""]
    revision = f" (revision `{base['revision']}`)" if base.get("revision") else ""
    bundled = reference != base["name"]
    where = (
        f"`{base['name']}` (bundled with fiftyone-blip: the folder `{reference}` of the package)"
        if bundled
        else f"`{reference}`"
    )
    settings = training.get("settings", {})
    lines = [
        f"# BLIP captions in {LANGUAGE_NAMES.get(language, language)} ({language}): a LoRA language adapter",
        "",
        f"A LoRA adapter on the text decoder of the BLIP captioner {where}{revision}, with "
        f"{tokens['added_tokens']} new tokens (ids {tokens['first_added_id']} to "
        f"{tokens['first_added_id'] + tokens['added_tokens'] - 1}) for the words and letters the base vocabulary "
        f"cannot write. The adapter's cased, accent-keeping tokenizer is saved beside it.",
        "",
        *_LOADING,
        "## Training data",
        "",
        f"{data['train_pairs']} image-caption pairs in {language}, with {data.get('held_out_pairs', 'no')} more held"
        " out for the figures below"
        + (
            " (synthetic shapes scenes of `fiftyone_blip.shapes`, captioned in each language by the scene"
            " generator's grammar)."
            if bundled
            else "."
        ),
        "",
        "## Held-out figures",
        "",
        "| measure | value |",
        "| --- | --- |",
        f"| greedy exact match | {metrics['held_out_exact_match']} |",
    ]
    if "held_out_loss" in metrics:
        lines.append(f"| token loss | {metrics['held_out_loss']} |")
    if "roundtrip_held_out" in tokens:
        lines.append(f"| tokenizer round trip | {tokens['roundtrip_held_out']} |")
    if "best_epoch" in metrics:
        lines.append(f"| best epoch / epochs run | {metrics['best_epoch']} / {metrics.get('epochs_run')} |")
    lines += [
        "",
        "## Training",
        "",
        f"LoRA rank {settings.get('rank', config.get('r'))}, alpha {settings.get('alpha', config.get('lora_alpha'))}"
        + (f", learning rate {settings['learning_rate']}" if "learning_rate" in settings else "")
        + f"; {manifest['parameters']['trainable']:,} trainable parameters"
        f" ({manifest['parameters']['ratio']:.2%} of the base). Trained by `fiftyone_blip.train_adapter`;"
        " the full record is in manifest.json.",
        "",
    ]
    return "\n".join(front + lines)


def train(language: str, samples, training: AdapterTrainingSettings, job: AdapterJobSettings, progress=True, log=print):
    """Trains and installs an adapter from `samples` or `job`'s folder; see `fiftyone_blip.train_adapter`."""
    check_language(language)
    if (samples is None) == (job.images_dir is None):
        raise ValueError("pass either `samples` (with `caption_field`) or `images_dir` (with `captions_file`)")
    if samples is not None:
        if not job.caption_field:
            raise ValueError("`caption_field` is required with `samples`")
        pairs = pairs_from_dataset(samples, job.caption_field)
    else:
        if not job.captions_file:
            raise ValueError("`captions_file` is required with `images_dir`")
        pairs = pairs_from_folder(job.images_dir, job.captions_file)
    return train_adapter(
        pairs,
        language,
        model=job.model,
        out=job.out,
        settings=training,
        device=job.device,
        overwrite=job.overwrite,
        threads=job.threads,
        progress=progress,
        log=log,
        revision=job.revision,
    )
