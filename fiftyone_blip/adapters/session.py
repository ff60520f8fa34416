"""Inference: several adapters on one base model, switched without reloading it."""

from __future__ import annotations

import contextlib
import threading
from pathlib import Path

from fiftyone_blip.adapters.registry import (
    BASE_LANGUAGE,
    WEIGHTS_FILE,
    AdapterError,
    base_name,
    base_vocab_size,
    check_adapter_files,
    check_files,
    check_language,
    find_adapter,
    installed_adapters,
    mismatch,
)


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
        self.base_vocab = base_vocab_size(net)
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
        check_files(directory)
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
        # Outside `active(language)` the model is the base model: any caller that uses it
        # directly (the zoo captioner, heatmaps) gets English, whatever loaded before.
        self.peft_model.base_model.disable_adapter_layers()
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
                context = _adapters_enabled(self.peft_model)
            try:
                with context:
                    yield
            finally:
                self.visible = self.base_vocab


@contextlib.contextmanager
def _adapters_enabled(peft_model):
    peft_model.base_model.enable_adapter_layers()
    try:
        yield
    finally:
        peft_model.base_model.disable_adapter_layers()


def _load_tokenizer(directory: Path):
    from transformers import BertTokenizerFast

    return BertTokenizerFast.from_pretrained(str(directory), trust_remote_code=False)


_SESSIONS: dict[int, _AdapterSession] = {}
_SESSIONS_LOCK = threading.Lock()


def forget_sessions() -> None:
    """Drops every adapter session, so loaded models can be freed (benchmarks switch devices)."""
    with _SESSIONS_LOCK:
        _SESSIONS.clear()


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
                if mismatch(m, loaded) is None
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
    return (
        session.tokenizers[language],
        _identity(language, session.manifests[language]),
        lambda: session.active(language),
    )


def identity(model, language: str | None) -> dict:
    """What `prepare` adds to a run's identity for `language`, known before the model loads.

    `model` is a `LoadedModel` or a `models.ModelReference`.

    Raises:
        AdapterError: no installed adapter fits the model, or int8 weights.
    """
    if language is None or language == BASE_LANGUAGE:
        return {}
    check_language(language)
    if model.dtype == "int8":
        raise AdapterError("language adapters need float weights; `dtype` 'int8' quantizes them away")
    return _identity(language, find_adapter(model, language))


def _identity(language: str, manifest: dict) -> dict:
    return {"language": language, "adapter": manifest.get("files", {}).get(WEIGHTS_FILE)}
