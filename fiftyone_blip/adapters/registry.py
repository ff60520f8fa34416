"""The adapter registry: language codes, where adapters live, their manifests, and which fit a model."""

from __future__ import annotations

import functools
import hashlib
import json
import os
import re
import shutil
import tempfile
from pathlib import Path

BASE_LANGUAGE = "en"
REGISTRY_ENV = "FIFTYONE_BLIP_ADAPTERS_DIR"
DEFAULT_REGISTRY = Path("~/.fiftyone-blip/adapters")
BUNDLED_ADAPTERS_DIR = Path(__file__).parent.parent / "shapes" / "adapters"
MANIFEST_FILE = "manifest.json"
WEIGHTS_FILE = "adapter_model.safetensors"
MAX_SIZE_RATIO = 0.05
FORMAT_VERSION = 1
# ISO 639 code with optional subtags ("de", "pt-BR", "zh-Hans"): never a path.
LANGUAGE_PATTERN = re.compile(r"^[a-z]{2,3}(?:-[A-Za-z0-9]{2,8})*$")


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
    return [registry_dir(), bundled_dir()]


CACHE_ENV = "FIFTYONE_BLIP_CACHE_DIR"


@functools.cache
def bundled_dir() -> Path:
    """The bundled adapters as they are listed and loaded: a copy of the package's folder whose
    `adapter_config.json` files name the bundled base model by its absolute path, so that plain
    peft (`AutoPeftModel.from_pretrained(folder)`) finds the base from any working directory.

    The package's own files name the base relative to the folder that holds `fiftyone_blip`
    (the install location is not known when they are made). The copy is made once per install
    and content, in `$FIFTYONE_BLIP_CACHE_DIR` (default `~/.cache/fiftyone-blip`); where it cannot
    be written, the package's folder is used as it is.
    """
    try:
        digest = hashlib.sha256(str(BUNDLED_ADAPTERS_DIR.resolve()).encode())
        for path in sorted(BUNDLED_ADAPTERS_DIR.rglob("*")):
            if path.is_file():
                digest.update(path.relative_to(BUNDLED_ADAPTERS_DIR).as_posix().encode() + path.read_bytes())
        cache = Path(
            os.environ.get(CACHE_ENV) or Path(os.environ.get("XDG_CACHE_HOME") or "~/.cache") / "fiftyone-blip"
        )
        target = cache.expanduser() / f"bundled-adapters-{digest.hexdigest()[:16]}"
        if not (target / ".complete").is_file():
            target.parent.mkdir(parents=True, exist_ok=True)
            staging = Path(tempfile.mkdtemp(prefix=".bundled-adapters-", dir=target.parent))
            for folder in sorted(BUNDLED_ADAPTERS_DIR.iterdir()):
                if folder.is_dir() and LANGUAGE_PATTERN.match(folder.name):
                    shutil.copytree(folder, staging / folder.name)
                    _name_base_absolutely(staging / folder.name)
            (staging / ".complete").touch()
            try:
                os.replace(staging, target)
            except OSError:  # another process made it first
                shutil.rmtree(staging, ignore_errors=True)
        return target
    except OSError as error:
        _logger().warning("bundled adapters used from the package folder (copy not made: %s)", error)
        return BUNDLED_ADAPTERS_DIR


def _name_base_absolutely(directory: Path) -> None:
    from fiftyone_blip import models

    config_path = directory / "adapter_config.json"
    base = json.loads((directory / MANIFEST_FILE).read_text()).get("base_model", {}).get("name")
    if base in models.BUNDLED and config_path.is_file():
        config = json.loads(config_path.read_text())
        config["base_model_name_or_path"] = str(models.BUNDLED[base]["caption"].resolve())
        config_path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


def adapter_dir(root: Path, language: str) -> Path:
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
    """What a manifest's `base_model` must match, for a `LoadedModel` or a `models.ModelReference`."""
    text = loaded.config.text_config
    model = getattr(loaded, "model", None)  # a reference has no weights yet: its config holds the base size
    return {
        "name": base_name(loaded),
        "revision": loaded.revision,
        "vocab_size": base_vocab_size(model) if model is not None else text.vocab_size,
        "hidden_size": text.hidden_size,
        "num_hidden_layers": text.num_hidden_layers,
    }


def base_vocab_size(model) -> int:
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


def mismatch(manifest: dict, loaded) -> str | None:
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
        directory = adapter_dir(root, language)
        if not (directory / MANIFEST_FILE).is_file():
            continue
        manifest = read_manifest(directory)
        problem = mismatch(manifest, loaded)
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


def check_files(directory: Path) -> None:
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

    check_files(directory)
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
        from transformers import BertTokenizerFast

        BertTokenizerFast.from_pretrained(str(directory), trust_remote_code=False)
    except Exception as error:  # tokenizers raise several types for a bad file
        raise AdapterError(f"adapter tokenizer in {str(directory)!r} cannot be loaded ({error})") from None
