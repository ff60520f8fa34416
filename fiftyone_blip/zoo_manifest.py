"""fiftyone-blip's model-zoo source as data: its manifest, its copy in FiftyOne's
`model_zoo_dir`, and the reference a similarity index stores to reload its model.

`fiftyone_blip.zoo` (the models) and `fiftyone_blip.embeddings` (the index) both
read this module; neither imports the other for it.

    url, kwargs = index_reference("shapes-tiny")          # what `embed` stores in the brain run
    checkpoint = index_checkpoint(config.model, config.model_kwargs)
"""

from __future__ import annotations

import json
import os
from pathlib import Path

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


def deployment(name: str) -> dict:
    """The `default_deployment_config_dict` of the zoo model `name`; a one-line error for an unknown name."""
    entries = model_entries()
    if name not in entries:
        raise ValueError(f"`model_name` must be one of {sorted(entries)}, got {name!r}")
    return entries[name]["default_deployment_config_dict"]


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
        config = deployment(name)
        if config["type"].endswith(".BlipItcModel"):
            from fiftyone_blip.models import DEFAULT_MODELS

            return kwargs.get("model") or config["config"].get("model") or DEFAULT_MODELS["match"]
    return None


def built_by_embed(model, model_kwargs) -> bool:
    """Whether `fiftyone_blip.embed` built a similarity index (it stores `index_reference`), not a user."""
    return model == LEGACY_ITC_NAME or (
        "model_name" in (model_kwargs or {}) and index_checkpoint(model, model_kwargs) is not None
    )
