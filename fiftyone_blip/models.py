"""One loader for every BLIP checkpoint: a hub id, a local directory or a bundled name.

    loaded = load_model("shapes-tiny", task="caption")
    loaded = load_model("Salesforce/blip-image-captioning-base", device="cuda")
    loaded = load_model("/models/blip-itm-base-coco", task="match")

Weights load from safetensors only and remote code is never trusted. Loaded
models are cached per process, so an App operator run twice loads once.
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import functools
import hashlib
import json
import os
import sys
from pathlib import Path

from fiftyone_blip.settings import DEVICES, DTYPES

BUNDLED_DIR = Path(__file__).parent / "shapes" / "models"
BUNDLED = {
    "shapes-tiny": {"caption": BUNDLED_DIR / "captioner", "match": BUNDLED_DIR / "matcher", "vqa": BUNDLED_DIR / "vqa"}
}
DEFAULT_MODELS = {
    "caption": "Salesforce/blip-image-captioning-base",
    "match": "Salesforce/blip-itm-base-coco",
    "vqa": "Salesforce/blip-vqa-base",
}
TASKS = tuple(DEFAULT_MODELS)
ATTENTIONS = ("sdpa", "eager")


class HubId(str):
    """A model name to load from the Hugging Face hub only, never from a folder of that name.

    The App's model names are these: a hub-shaped name (`org/model`) that also names a folder
    relative to the server's working directory must not load that folder.
    """


HUB_FILES = ["*.json", "*.safetensors", "*.txt"]  # config, processor, tokenizer, weights


class ModelLoadError(RuntimeError):
    """A model could not be found or is not a BLIP model of the right kind."""


@dataclasses.dataclass
class LoadedModel:
    """A BLIP model with its processor and where it came from."""

    model: object
    processor: object
    name: str
    path: str
    revision: str | None
    task: str
    device: str
    dtype: str
    attention: str = "eager"
    weights: str | None = None  # a local folder's weight files (see `weights_version`)

    @property
    def identity(self) -> dict:
        """What a run record stores to say which weights produced a result."""
        return model_identity(self.name, self.path, self.revision, self.dtype, self.weights)

    def load(self) -> LoadedModel:
        """This model (a `ModelReference` loads it): task builders take either."""
        return self

    @property
    def config(self):
        return self.model.config

    @property
    def grid_size(self) -> int:
        """Patches per side of the vision grid, read from the config."""
        vision = self.model.config.vision_config
        return vision.image_size // vision.patch_size

    @property
    def image_size(self) -> int:
        return self.model.config.vision_config.image_size

    # ---- the BLIP steps every capability shares

    def preprocessor(self, resize: str = "squash", fast_decode: bool = False):
        """An `images.Preprocessor` for this model's processor and input size."""
        from fiftyone_blip.images import Preprocessor

        return Preprocessor(self.processor.image_processor, self.image_size, resize, fast_decode)

    def autocast(self):
        """bf16/fp16 on CPU runs as autocast over fp32 weights; GPUs hold weights in that dtype."""
        import torch

        if self.dtype in ("bfloat16", "float16") and self.device == "cpu":
            return torch.autocast("cpu", dtype=getattr(torch, self.dtype))
        return contextlib.nullcontext()

    def pixels(self, pixel_values):
        """A pixel batch on the model's device, in its weights' dtype."""
        return pixel_values.to(self.device, dtype=next(self.model.parameters()).dtype)

    def image_embeds(self, pixel_values):
        """Patch embeddings (batch, 1 + grid * grid, width) of a pixel batch."""
        return self.model.vision_model(pixel_values=self.pixels(pixel_values)).last_hidden_state

    def text_tokens(self, texts: list[str], max_length: int, tokenizer=None):
        """Padded token ids and attention mask of `texts`, truncated to `max_length`, on the device."""
        tokenizer = tokenizer if tokenizer is not None else self.processor.tokenizer
        batch = tokenizer(list(texts), padding="longest", truncation=True, max_length=max_length, return_tensors="pt")
        return batch["input_ids"].to(self.device), batch["attention_mask"].to(self.device)

    @functools.cached_property
    def vision_states(self):
        """The vision tower's output of the images this model re-ranked last (`embeddings.VisionStates`)."""
        from fiftyone_blip import embeddings

        return embeddings.VisionStates(embeddings.VISION_STATES_BYTES)

    @functools.cached_property
    def heads(self) -> RetrievalHeads:
        """The retrieval heads (ITC features, ITM) of a matching model: embeddings, label QA, search and
        the zoo models score through them."""
        return RetrievalHeads(self)

    def itm_logits(self, image_embeds, input_ids, attention_mask):
        """The ITM head's (no match, match) logits, in float32 (see `RetrievalHeads.itm_logits`)."""
        return self.heads.itm_logits(image_embeds, input_ids, attention_mask)


class RetrievalHeads:
    """BLIP's retrieval heads on a loaded `BlipForImageTextRetrieval`: ITC image and text features
    (unit vectors in the shared space) and ITM match logits of fused image-text pairs.

    The one place that names BLIP's retrieval submodules (`vision_proj`,
    `text_proj`, `text_encoder`, `itm_head`): another model family (BLIP-2's
    Q-Former retrieval, say) plugs in by giving these three methods.
    """

    def __init__(self, loaded: LoadedModel):
        self.model = loaded.model

    def image_features(self, image_embeds):
        """Normalised ITC features (float32) of images from their patch embeddings (`image_embeds`)."""
        import torch

        return torch.nn.functional.normalize(self.model.vision_proj(image_embeds[:, 0]).float(), dim=-1)

    def text_features(self, input_ids, attention_mask):
        """Normalised ITC features (float32) of texts from the unimodal text encoder."""
        import torch

        hidden = self.model.text_encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        return torch.nn.functional.normalize(self.model.text_proj(hidden[:, 0]).float(), dim=-1)

    def itm_logits(self, image_embeds, input_ids, attention_mask):
        """The ITM head's (no match, match) logits, in float32, of each text fused with its image."""
        import torch

        fused = self.model.text_encoder(
            input_ids=input_ids,
            attention_mask=attention_mask,
            encoder_hidden_states=image_embeds,
            encoder_attention_mask=torch.ones(image_embeds.shape[:2], dtype=torch.long, device=image_embeds.device),
        ).last_hidden_state
        return self.model.itm_head(fused[:, 0]).float()


def resolve_device(device: str = "auto") -> str:
    """Turns "auto" into the best available device; checks the others exist."""
    import torch

    if device not in DEVICES:
        raise ValueError(f"`device` must be one of {DEVICES}, got {device!r}")
    if device == "auto":
        if torch.cuda.is_available():
            return "cuda"
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return "mps"
        return "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("`device` is 'cuda' but no CUDA device is available")
    if device == "mps" and not torch.backends.mps.is_available():
        raise ValueError("`device` is 'mps' but MPS is not available")
    return device


def resolve_dtype(dtype: str, device: str) -> str:
    """Resolves "auto" (float32 on CPU, bfloat16 on GPUs) and checks that "int8" runs on the CPU.

    On the CPU, bf16 and fp16 run as autocast over fp32 weights (see `captions.Captioner`).
    """
    if dtype not in DTYPES:
        raise ValueError(f"`dtype` must be one of {DTYPES}, got {dtype!r}")
    if dtype == "auto":
        return "float32" if device == "cpu" else "bfloat16"
    if dtype == "int8" and device != "cpu":
        raise ValueError(f"`dtype` 'int8' (dynamic quantization) runs on the CPU only, not on {device!r}")
    return dtype


def resolve_name(name: str | None, task: str) -> tuple[str, Path | None]:
    """Returns (name, local directory or None for a hub id)."""
    if task not in TASKS:
        raise ValueError(f"`task` must be one of {TASKS}, got {task!r}")
    name = name or DEFAULT_MODELS[task]
    if name in BUNDLED:
        return name, BUNDLED[name][task]
    if isinstance(name, HubId):
        return name, None
    path = Path(name).expanduser()
    if path.is_dir():
        return name, path.resolve()
    if path.exists() or name.startswith((".", "/", "~")) or name.count("/") > 1:
        raise ModelLoadError(f"model directory {name!r} does not exist")
    return name, None


def check_revision_applies(name: str | None, task: str, revision: str | None) -> None:
    """Refuses a `revision` for a bundled or local model: it would be ignored at load, yet recorded
    as part of the model's identity (run record, field info, fingerprint)."""
    if revision is None:
        return
    resolved, local = resolve_name(name, task)
    if local is not None:
        kind = "a bundled" if resolved in BUNDLED else "a local"
        raise ValueError(f"`revision` applies to hub models only; {resolved!r} is {kind} model: leave `revision` out")


def check_blip_config(config: dict, source: str, task: str) -> None:
    model_type = config.get("model_type")
    if model_type != "blip":
        raise ModelLoadError(f"{source} is not a BLIP model (config model_type is {model_type!r})")
    expected = {
        "caption": "BlipForConditionalGeneration",
        "match": "BlipForImageTextRetrieval",
        "vqa": "BlipForQuestionAnswering",
    }[task]
    architectures = config.get("architectures") or []
    if architectures and expected not in architectures:
        raise ModelLoadError(f"{source} is a {architectures[0]} checkpoint; {task} needs a {expected} checkpoint")


HUB_PROBE_SECONDS = 3.0
_PROXY_VARIABLES = ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy")


def hub_unreachable() -> bool:
    """True when the hub's endpoint cannot be reached: one TCP connection, at most `HUB_PROBE_SECONDS`.

    Without it, a machine with no network and no HF_HUB_OFFLINE waits through the hub client's
    retries (about 40 s, a dozen "Retrying" lines) before any error. Behind a proxy (whose
    variables are set) the endpoint is not reached directly, so it is not probed.
    """
    import socket
    import threading
    from urllib.parse import urlsplit

    from huggingface_hub import constants

    if any(os.environ.get(variable) for variable in _PROXY_VARIABLES):
        return False
    url = urlsplit(constants.ENDPOINT)
    address = (url.hostname, url.port or (443 if url.scheme == "https" else 80))
    reached = []

    def probe():  # in a thread: name resolution has no timeout of its own
        try:
            socket.create_connection(address, timeout=HUB_PROBE_SECONDS).close()
            reached.append(True)
        except OSError:
            pass

    thread = threading.Thread(target=probe, name="fiftyone-blip-hub-probe", daemon=True)
    thread.start()
    thread.join(HUB_PROBE_SECONDS)
    return not reached


def _hub_config(name: str, revision: str | None, unreachable: bool = False) -> tuple[dict, str]:
    """The hub model's config and its commit; with `unreachable`, from the local cache only."""
    from huggingface_hub import hf_hub_download

    try:
        path = hf_hub_download(name, "config.json", revision=revision, local_files_only=unreachable)
    except Exception as error:  # the hub client raises many types for "offline"
        if unreachable:
            raise ModelLoadError(
                f"cannot load {name!r}: it is not in the local Hugging Face cache and the hub cannot be reached; "
                f"download it where the hub is reachable (`hf download {name} --local-dir DIR`) and pass that "
                "directory as the model (set HF_HUB_OFFLINE=1 to use the cache without trying the hub)"
            ) from None
        raise ModelLoadError(
            f"cannot load {name!r}: it is not in the local Hugging Face cache and the hub could not be "
            f"reached ({type(error).__name__}); download it where the hub is reachable "
            f"(`hf download {name} --local-dir DIR`) and pass that directory as the model"
        ) from None
    # Cached files live under .../snapshots/<commit>/config.json.
    return json.loads(Path(path).read_text()), Path(path).parent.name


def _hub_lookup(name: str, revision: str | None) -> tuple[dict, str, bool]:
    """(config, resolved revision, whether the hub is unreachable) of a hub model; the endpoint is
    probed (`hub_unreachable`) unless HF_HUB_OFFLINE is set."""
    from huggingface_hub import constants

    unreachable = not constants.HF_HUB_OFFLINE and hub_unreachable()
    config, resolved = _hub_config(name, revision, unreachable)
    return config, resolved, unreachable


def _checked_config(name: str, local: Path | None, task: str, revision: str | None) -> tuple[dict, str, bool]:
    """(config, resolved revision, whether the hub is unreachable) of a model folder or hub id, checked to
    be the BLIP architecture `task` needs; a folder must hold config.json and .safetensors weights."""
    if local is not None:
        config_file = local / "config.json"
        if not config_file.exists():
            raise ModelLoadError(f"model directory {str(local)!r} has no config.json")
        config, resolved_revision, unreachable = json.loads(config_file.read_text()), revision, False
        if not any(local.glob("*.safetensors")):
            raise ModelLoadError(f"model directory {str(local)!r} has no .safetensors weights")
    else:
        config, resolved_revision, unreachable = _hub_lookup(name, revision)
    check_blip_config(config, repr(str(local) if local is not None else name), task)
    return config, resolved_revision, unreachable


def _hub_snapshot(name: str, revision: str, local_only: bool = False) -> str:
    from huggingface_hub import snapshot_download

    try:
        return snapshot_download(name, revision=revision, allow_patterns=HUB_FILES, local_files_only=local_only)
    except Exception as error:  # as in `_hub_config`: many types for "offline"
        raise ModelLoadError(f"cannot load {name!r} from the hub ({type(error).__name__})") from None


def keep_freed_memory() -> bool:
    """Asks glibc to keep large freed blocks for reuse instead of returning them to the OS.

    By default every batch's activations (hundreds of MB for BLIP-base) are
    unmapped when freed and page-faulted in again by the next batch; keeping
    them made the BLIP-base CPU step about 20% faster here (BENCHMARKS.md).
    The price: the process keeps its peak memory instead of shrinking between
    batches. Set FIFTYONE_BLIP_KEEP_FREED_MEMORY=0 to leave glibc's defaults.
    Returns whether the setting was applied.
    """
    if sys.platform != "linux" or os.environ.get("FIFTYONE_BLIP_KEEP_FREED_MEMORY", "1") == "0":
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:  # not glibc
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3
    return bool(libc.mallopt(m_mmap_threshold, 1 << 30) and libc.mallopt(m_trim_threshold, 1 << 30))


def _damaged_weights(local: Path) -> Path | None:
    """The first .safetensors file of a folder that cannot be read (a truncated download), or None."""
    from safetensors import SafetensorError, safe_open

    for path in sorted(local.glob("*.safetensors")):
        try:
            with safe_open(str(path), framework="pt") as handle:
                for key in handle.keys():
                    handle.get_tensor(key)
        except (SafetensorError, OSError):
            return path
    return None


@functools.lru_cache(maxsize=4)
def _load(
    name: str,
    local: Path | None,
    task: str,
    device: str,
    dtype: str,
    revision: str | None,
    attention: str,
    weights: str | None = None,
) -> LoadedModel:
    import torch
    from safetensors import SafetensorError
    from transformers import (
        BlipForConditionalGeneration,
        BlipForImageTextRetrieval,
        BlipForQuestionAnswering,
        BlipProcessor,
    )

    _, resolved_revision, unreachable = _checked_config(name, local, task, revision)
    source = load_from = str(local) if local is not None else name
    if local is None and (unreachable or Path(name).expanduser().exists()):
        # no hub: the cached files, from their folder (transformers would try the hub first);
        # a hub id that also names a local path (`HubId`): transformers would read that folder.
        # The model is still named by its hub id (its identity in run records and fingerprints).
        load_from = _hub_snapshot(name, resolved_revision, local_only=unreachable)

    cls = {
        "caption": BlipForConditionalGeneration,
        "match": BlipForImageTextRetrieval,
        "vqa": BlipForQuestionAnswering,
    }[task]
    # On CPU, weights stay fp32: bf16/fp16 there run as autocast, int8 as int8 Linear layers.
    weight_dtype = torch.float32 if device == "cpu" else getattr(torch, dtype)
    try:
        model = cls.from_pretrained(
            load_from, revision=revision, use_safetensors=True, trust_remote_code=False, dtype=weight_dtype
        )
        processor = BlipProcessor.from_pretrained(load_from, revision=revision, trust_remote_code=False)
    except OSError as error:
        raise ModelLoadError(f"cannot load {source!r}: {str(error).splitlines()[0]}") from None
    except SafetensorError as error:
        damaged = _damaged_weights(local) if local is not None else None
        where = f"weights file {str(damaged)!r}" if damaged else "its weights"
        raise ModelLoadError(f"cannot load {source!r}: {where} cannot be read ({error})") from None
    model.to(device).eval()
    if device == "cpu":
        keep_freed_memory()
    if dtype == "int8":
        # Linear layers as int8 GEMMs with one activation scale per token, so that a result does
        # not depend on its batch (see `fiftyone_blip.int8`; speed and agreement in BENCHMARKS.md).
        from fiftyone_blip.int8 import quantize_linear_layers

        quantize_linear_layers(model)
    if attention == "sdpa":
        from fiftyone_blip.sdpa import use_sdpa

        use_sdpa(model)
    return LoadedModel(
        model=model,
        processor=processor,
        name=name,
        path=source,
        revision=resolved_revision,
        task=task,
        device=device,
        dtype=dtype,
        attention=attention,
        weights=weights,
    )


# int8 results of the per-token quantization (`int8.py`) differ from those of torch.ao's per-tensor
# one that came before: its identity says which, so earlier int8 results are not taken for these.
INT8_SCHEME = "per-token activations, per-channel weights"


def model_identity(name: str, path: str, revision: str | None, dtype: str, weights: str | None) -> dict:
    """Which weights (and which int8 quantization) produce a result: the model part of a fingerprint."""
    # a bundled model is the package's own: where it is installed says nothing about its weights
    identity = {"model": name, "path": "bundled" if name in BUNDLED else path, "revision": revision, "dtype": dtype}
    if dtype == "int8":
        identity["quantization"] = INT8_SCHEME
    if weights is not None:
        identity["weights"] = weights
    return identity


def weights_version(local: Path, bundled: bool = False) -> str:
    """Which weights a local folder holds: its weight files' size and mtime (new weights saved over old
    ones change it); for a bundled model their content's hash, the same wherever the package is installed."""
    files = sorted(local.glob("*.safetensors"))
    stats = [path.stat() for path in files]
    if bundled:
        return ",".join(_content_hash(path, stat.st_size, stat.st_mtime_ns) for path, stat in zip(files, stats))
    return ",".join(f"{stat.st_size}-{stat.st_mtime_ns}" for stat in stats)


@functools.lru_cache(maxsize=16)
def _content_hash(path: Path, size: int, mtime_ns: int) -> str:
    """sha256 of a file (its first 16 hex digits), computed once per size and mtime."""
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return "sha256-" + digest.hexdigest()[:16]


@contextlib.contextmanager
def quiet_loading():
    """Silences transformers' and the Hugging Face hub's loading bars and warnings, restoring them after
    (the CLI's `-q`: with `--json`, stdout and stderr then hold nothing but the JSON)."""
    from transformers.utils import logging as hf_logging

    bars, verbosity = hf_logging.is_progress_bar_enabled(), hf_logging.get_verbosity()
    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    try:
        yield
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()


def load_model(
    name: str | None = None,
    task: str = "caption",
    device: str = "auto",
    dtype: str = "auto",
    revision: str | None = None,
    attention: str = "sdpa",
    cached: bool = True,
) -> LoadedModel:
    """Loads a BLIP model and its processor.

    Args:
        name: a hub id ("Salesforce/blip-image-captioning-base"), a local
            directory, or a bundled name ("shapes-tiny"). Defaults to the
            Salesforce base checkpoint of the task.
        task: "caption" (BlipForConditionalGeneration), "match"
            (BlipForImageTextRetrieval) or "vqa" (BlipForQuestionAnswering).
        device: "auto", "cpu", "cuda" or "mps" ("auto").
        dtype: "auto", "float32", "bfloat16", "float16" or "int8" ("auto":
            float32 on CPU, bfloat16 on GPUs). On CPU, bf16/fp16 run as autocast
            over fp32 weights; "int8" (CPU only) runs Linear layers as int8
            GEMMs with one activation scale per token (`fiftyone_blip.int8`),
            so a result does not depend on the batch it runs in.
        revision: a hub revision (branch, tag or commit); None for the default.
        attention: "sdpa" (fused scaled-dot-product attention, see
            `fiftyone_blip.sdpa`) or "eager" (transformers' own, which
            can return attention weights) ("sdpa").
        cached: share one loaded copy per arguments with other callers (the
            last four are kept); False loads a private copy that the caller
            may change, e.g. to train it (True).

    Raises:
        ModelLoadError: the model cannot be found, or is not the BLIP
            architecture the task needs.
        ValueError: an unknown task, device or dtype.
    """
    if attention not in ATTENTIONS:
        raise ValueError(f"`attention` must be one of {ATTENTIONS}, got {attention!r}")
    check_revision_applies(name, task, revision)
    resolved, local = resolve_name(name, task)
    device = resolve_device(device)
    dtype = resolve_dtype(dtype, device)
    # lru_cache keeps the undecorated function as __wrapped__: a fresh, private copy.
    # The weights' version is part of the cache key: a model saved again is loaded again.
    weights = weights_version(local, resolved in BUNDLED) if local is not None else None
    loader = _load if cached else _load.__wrapped__
    return loader(resolved, local, task, device, dtype, revision, attention, weights)


@dataclasses.dataclass
class ModelReference:
    """A model named and resolved but not loaded: its identity is known before any weights are read.

    The engine checks a run (field types, values of others, claims) with the
    identity alone, and loads the weights (`load`) only once every check
    passed. Task builders take a `ModelReference` or a `LoadedModel`.
    """

    name: str
    task: str
    device: str
    dtype: str
    requested_revision: str | None
    attention: str
    local: Path | None
    revision: str | None  # as resolved (a hub commit), like `LoadedModel.revision`
    config: object

    @property
    def path(self) -> str:
        return str(self.local) if self.local is not None else self.name

    @property
    def identity(self) -> dict:
        weights = weights_version(self.local, self.name in BUNDLED) if self.local is not None else None
        return model_identity(self.name, self.path, self.revision, self.dtype, weights)

    @functools.cached_property
    def processor(self):
        """The model's processor (tokenizer and image settings): small files, read before the weights so
        that checks needing the vocabulary (caption constraints, candidate answers) come first."""
        from transformers import BlipProcessor

        source = self.path
        if self.local is None:
            try:  # the cached files, from their folder, as `_load` reads them
                source = _hub_snapshot(self.name, self.revision, local_only=True)
            except ModelLoadError:
                source = self.name
        try:
            return BlipProcessor.from_pretrained(source, revision=self.requested_revision, trust_remote_code=False)
        except OSError as error:
            raise ModelLoadError(f"cannot load {self.name!r}: {str(error).splitlines()[0]}") from None

    def load(self) -> LoadedModel:
        loaded = load_model(
            self.name,
            task=self.task,
            device=self.device,
            dtype=self.dtype,
            revision=self.requested_revision,
            attention=self.attention,
        )
        if loaded.identity != self.identity:
            raise ModelLoadError(f"model {self.name!r} changed while it was loading; run again")
        return loaded


def reference_for(name: str | None, task: str, options, attention: str = "sdpa") -> ModelReference:
    """`reference` with a run's device, dtype and revision (a `settings.RunOptions`)."""
    return reference(
        name, task=task, device=options.device, dtype=options.dtype, revision=options.revision, attention=attention
    )


def reference(
    name: str | None = None,
    task: str = "caption",
    device: str = "auto",
    dtype: str = "auto",
    revision: str | None = None,
    attention: str = "sdpa",
) -> ModelReference:
    """Resolves a model without loading its weights: name, device, dtype, revision and its config.

    Reads only `config.json` (from the folder, or the local Hugging Face cache
    for a hub id) and checks it is the BLIP architecture `task` needs.

    Raises:
        ModelLoadError: as `load_model`, before any weights are read.
        ValueError: an unknown task, device, dtype or attention.
    """
    from transformers import BlipConfig

    if attention not in ATTENTIONS:
        raise ValueError(f"`attention` must be one of {ATTENTIONS}, got {attention!r}")
    check_revision_applies(name, task, revision)
    resolved, local = resolve_name(name, task)
    device = resolve_device(device)
    dtype = resolve_dtype(dtype, device)
    config, resolved_revision, _ = _checked_config(resolved, local, task, revision)
    return ModelReference(
        resolved, task, device, dtype, revision, attention, local, resolved_revision, BlipConfig.from_dict(config)
    )
