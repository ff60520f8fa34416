"""Result fields: which names may hold results, and declaring them.

Every capability declares the fields it writes before any work: a missing
field is added with its exact type; an existing field of another type is an
error, so a run never writes into (or silently converts) a field it does not
own.
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
    if "embedded_doc_type" in kwargs and existing.document_type is not kwargs["embedded_doc_type"]:
        return False
    return "subfield" not in kwargs or isinstance(existing.field, kwargs["subfield"])


def declare(dataset, wanted: dict, writer: str, flat: bool = False) -> None:
    """Adds the fields `wanted` lacks; refuses an existing field of another type.

    Args:
        dataset: the FiftyOne dataset.
        wanted: name (a dotted path with `flat`) -> field type, or (field
            type, keyword arguments of `add_sample_field`, e.g. `subfield`).
        writer: what writes there, for the error ("heatmaps").
        flat: names are paths into embedded documents (label attributes).

    Raises:
        ValueError: a field exists with another type; nothing is added then.
    """
    specs = {name: spec if isinstance(spec, tuple) else (spec, {}) for name, spec in wanted.items()}
    schema = dataset.get_field_schema(flat=flat)
    for name, (field_type, kwargs) in specs.items():
        existing = schema.get(name)
        if existing is not None and not _matches(existing, field_type, kwargs):
            raise ValueError(
                f"field {name!r} already exists as a {type(existing).__name__}; {writer} writes a "
                f"{field_type.__name__} there: choose another field"
            )
    for name, (field_type, kwargs) in specs.items():
        if name not in schema:
            dataset.add_sample_field(name, field_type, **kwargs)
