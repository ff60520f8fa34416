"""The adapter registry: language codes, where adapters live, their manifests, and which fit a model."""

from __future__ import annotations

import json
import os
import re
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
    return [registry_dir(), BUNDLED_ADAPTERS_DIR]


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
    except (OSError, json.JSONDecodeError) as error:
        raise AdapterError(f"{str(directory)!r} is not a language adapter ({MANIFEST_FILE}: {error})") from None
    manifest["path"] = str(directory)
    return manifest


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
        "vocab_size": base_vocab_size(loaded.model),
        "hidden_size": text.hidden_size,
        "num_hidden_layers": text.num_hidden_layers,
    }


def base_vocab_size(model) -> int:
    # Once adapters are attached the embedding grows; the base size is kept aside.
    return getattr(model, "_fiftyone_blip_base_vocab_size", None) or model.config.text_config.vocab_size


def installed_adapters(model: str | None = None) -> list[dict]:
    """Manifests of the installed adapters (registry first, then bundled), each with its `path`.

    Args:
        model: only adapters trained for this base model name (None: all).
    """
    found, seen = [], set()
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
            except AdapterError:
                continue
            base = manifest.get("base_model", {}).get("name")
            key = (directory.name, base)
            if key in seen or (model is not None and base != model):
                continue
            seen.add(key)
            found.append(manifest)
    return found


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
