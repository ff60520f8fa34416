"""Result fields: which names may hold results, declaring them, and describing them.

Every capability declares the fields it writes before any work: a missing
field is added with its exact type; an existing field of another type is an
error, so a run never writes into (or silently converts) a field it does not
own. Each field then carries a FiftyOne `description` (what it holds) and
`info` (who wrote it: capability, main field, model, revision, fingerprint),
which the App shows beside the field and `dataset.get_field(name)` returns.
"""

from __future__ import annotations

import re

# the fields FiftyOne itself keeps on every sample
RESERVED_FIELDS = frozenset({"id", "filepath", "tags", "metadata", "created_at", "last_modified_at", "media_type"})
_FIELD_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_]*$")


def check_field_name(field: str) -> str:
    """Checks that `field` can hold results: a plain name, not a built-in field."""
    if not isinstance(field, str) or not _FIELD_NAME.match(field):
        raise ValueError(f"`field` must be a name of letters, digits and underscores, got {field!r}")
    if field in RESERVED_FIELDS:
        raise ValueError(f"`field` cannot be the built-in field {field!r}")
    return field


def _matches(existing, field_type, kwargs: dict) -> bool:
    if not isinstance(existing, field_type):
        return False
    if "subfield" in kwargs and not isinstance(existing.field, kwargs["subfield"]):
        return False
    # a list of embedded documents keeps their type on its subfield
    holder = existing.field if "subfield" in kwargs else existing
    return "embedded_doc_type" not in kwargs or getattr(holder, "document_type", None) is kwargs["embedded_doc_type"]


def _specs(wanted: dict) -> dict:
    return {name: spec if isinstance(spec, tuple) else (spec, {}) for name, spec in wanted.items()}


def check(dataset, wanted: dict, writer: str, flat: bool = False) -> None:
    """Refuses a field of `wanted` that exists with another type; adds nothing.

    Args:
        dataset: the FiftyOne dataset.
        wanted: name (a dotted path with `flat`) -> field type, or (field
            type, keyword arguments of `add_sample_field`, e.g. `subfield`).
        writer: what writes there, for the error ("heatmaps").
        flat: names are paths into embedded documents (label attributes).

    Raises:
        ValueError: a field exists with another type, or a name cannot hold results.
    """
    schema = dataset.get_field_schema(flat=flat)
    for name, (field_type, kwargs) in _specs(wanted).items():
        if not flat:
            check_field_name(name)
        existing = schema.get(name)
        if existing is not None and not _matches(existing, field_type, kwargs):
            raise ValueError(
                f"field {name!r} already exists as a {type(existing).__name__}; {writer} writes a "
                f"{field_type.__name__} there: choose another field"
            )


def declare(dataset, wanted: dict, writer: str, flat: bool = False) -> None:
    """Adds the fields `wanted` lacks (see `check`, which runs first: nothing is added on a refusal)."""
    check(dataset, wanted, writer, flat)
    schema = dataset.get_field_schema(flat=flat)
    for name, (field_type, kwargs) in _specs(wanted).items():
        if name not in schema:
            dataset.add_sample_field(name, field_type, **kwargs)


def writer_info(capability: str, field: str, identity: dict, fingerprint: str | None = None, **extra) -> dict:
    """The `info` of a field fiftyone-blip writes: which run (capability and main field) and which model.

    `identity` is a loaded model's identity (model, path, revision, dtype,
    and a language adapter's `language` / `adapter`); the weights' version is
    left out (it changes with every save of a local folder).
    """
    info = {"written_by": "fiftyone-blip", "capability": capability, "field": field}
    info.update({k: v for k, v in identity.items() if k != "weights"})
    if fingerprint is not None:
        info["fingerprint"] = fingerprint
    info.update(extra)
    return info


def describe(dataset, descriptions: dict, info: dict | None = None) -> None:
    """Sets each field's FiftyOne `description` and `info`; saves only the fields that change.

    Args:
        dataset: the FiftyOne dataset.
        descriptions: field name (a dotted path for label attributes) -> one
            sentence of what it holds (None: leave the description as it is).
        info: a dict stored as each field's `info` (None: leave it), usually
            `writer_info(...)`: the latest run that wrote the field.
    """
    for name, description in descriptions.items():
        field = dataset.get_field(name)
        if field is None:
            continue
        changed = False
        if description is not None and field.description != description:
            field.description = description
            changed = True
        if info is not None and field.info != info:
            field.info = dict(info)
            changed = True
        if changed:
            field.save()
