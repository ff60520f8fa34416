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

from fiftyone_blip.adapters.data import pairs_from_dataset, pairs_from_folder
from fiftyone_blip.adapters.registry import (
    BASE_LANGUAGE,
    BUNDLED_ADAPTERS_DIR,
    FORMAT_VERSION,
    MANIFEST_FILE,
    MAX_SIZE_RATIO,
    REGISTRY_ENV,
    WEIGHTS_FILE,
    AdapterError,
    base_identity,
    base_name,
    broken_adapters,
    check_language,
    find_adapter,
    installed_adapters,
    languages,
    read_manifest,
    registry_dir,
    search_dirs,
)
from fiftyone_blip.adapters.session import forget_sessions, identity, prepare, session_for
from fiftyone_blip.adapters.tokenizer import build_tokenizer, roundtrip_rate
from fiftyone_blip.adapters.training import (
    AdapterJobSettings,
    AdapterTrainingSettings,
    lora_config,
    train,
    train_adapter,
)

__all__ = [
    "BASE_LANGUAGE",
    "BUNDLED_ADAPTERS_DIR",
    "FORMAT_VERSION",
    "MANIFEST_FILE",
    "MAX_SIZE_RATIO",
    "REGISTRY_ENV",
    "WEIGHTS_FILE",
    "AdapterError",
    "AdapterJobSettings",
    "AdapterTrainingSettings",
    "base_identity",
    "identity",
    "base_name",
    "broken_adapters",
    "build_tokenizer",
    "check_language",
    "find_adapter",
    "forget_sessions",
    "installed_adapters",
    "languages",
    "lora_config",
    "pairs_from_dataset",
    "pairs_from_folder",
    "prepare",
    "read_manifest",
    "registry_dir",
    "roundtrip_rate",
    "search_dirs",
    "session_for",
    "train",
    "train_adapter",
]
