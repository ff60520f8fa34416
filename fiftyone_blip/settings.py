"""Settings declared once: default, bounds, choices and help live on the dataclass field.

Every settings class (`RunOptions` here, `CaptionSettings`, ...) declares each
field with `setting(...)`, as peft's configs keep their help in
`dataclasses.field(metadata=...)`. The SDK, the CLI and the operator forms
read defaults, bounds and help from there, so a default is written in one
place only:

    @dataclasses.dataclass
    class MySettings(Settings):
        max_new_tokens: int = setting(30, "most generated tokens", min=1, max=128)

    MySettings.from_params({"max_new_tokens": 40, "unrelated": 1})   # an operator's ctx.params
    MySettings(max_new_tokens=500)      # ValueError: `max_new_tokens` must be in 1..128, got 500
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

# Surfaces a setting is offered on; `progress`, a Python callable, is SDK-only.
SURFACES = ("sdk", "cli", "app")


def setting(
    default: Any = dataclasses.MISSING,
    help: str = "",
    *,
    label: str | None = None,
    choices: tuple | None = None,
    min: float | None = None,
    max: float | None = None,
    min_exclusive: bool = False,
    advanced: bool = False,
    surfaces: tuple[str, ...] = SURFACES,
    cli_flags: tuple[str, ...] = (),
    default_factory: Any = dataclasses.MISSING,
) -> Any:
    """A dataclass field that carries its own documentation and bounds.

    Args:
        default: the default value.
        help: one sentence for CLI help, form descriptions and docstrings.
        label: the form label (None: the name, capitalised, underscores as spaces).
        choices: the allowed values (None: any).
        min, max: inclusive bounds for numbers (None: unbounded); `min` is
            exclusive with `min_exclusive`.
        advanced: shown in the forms' collapsed "Advanced" part.
        surfaces: where the setting is offered: "sdk", "cli", "app".
        cli_flags: short CLI flags besides --name-with-dashes, e.g. ("-b",).
    """
    metadata = dict(
        help=help,
        label=label,
        choices=choices,
        min=min,
        max=max,
        min_exclusive=min_exclusive,
        advanced=advanced,
        surfaces=surfaces,
        cli_flags=cli_flags,
    )
    if default_factory is not dataclasses.MISSING:
        return dataclasses.field(default_factory=default_factory, metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


def label_of(field: dataclasses.Field) -> str:
    return field.metadata.get("label") or field.name.replace("_", " ").capitalize()


def check_value(name: str, value: Any, metadata: dict) -> None:
    """Checks one value against its field's choices and bounds; the message names the parameter."""
    choices = metadata.get("choices")
    if choices is not None and value not in choices:
        raise ValueError(f"`{name}` must be one of {tuple(choices)}, got {value!r}")
    lo, hi = metadata.get("min"), metadata.get("max")
    if value is None or (lo is None and hi is None) or isinstance(value, bool):
        return
    if not isinstance(value, (int, float)) or (isinstance(value, float) and math.isnan(value)):
        raise ValueError(f"`{name}` must be a number, got {value!r}")
    exclusive = metadata.get("min_exclusive")
    too_low = lo is not None and (value <= lo if exclusive else value < lo)
    if too_low or (hi is not None and value > hi):
        if lo is not None and hi is not None:
            span = f"({lo}, {hi}]" if exclusive else f"{lo}..{hi}"
            raise ValueError(f"`{name}` must be in {span}, got {value!r}")
        if lo is not None:
            raise ValueError(f"`{name}` must be {'>' if exclusive else '>='} {lo}, got {value!r}")
        raise ValueError(f"`{name}` must be <= {hi}, got {value!r}")


class Settings:
    """Mixin for settings dataclasses: declared checks, `from_params`, `replace`, `as_dict`."""

    def __post_init__(self):
        for field in dataclasses.fields(self):
            check_value(field.name, getattr(self, field.name), field.metadata)

    @classmethod
    def fields(cls, surface: str | None = None) -> list[dataclasses.Field]:
        """The declared fields, optionally only those offered on one surface."""
        return [
            f for f in dataclasses.fields(cls) if surface is None or surface in f.metadata.get("surfaces", SURFACES)
        ]

    @classmethod
    def defaults(cls) -> dict:
        return {
            f.name: (f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default)
            for f in dataclasses.fields(cls)
        }

    @classmethod
    def from_params(cls, params: dict, **overrides):
        """Settings from a dict named like the SDK keywords (an operator's `ctx.params`).

        Keys that are not fields are ignored; a missing or None value takes the
        default, so a form that leaves a field empty gets the same result as
        the SDK.
        """
        names = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in (params or {}).items() if k in names and v is not None}
        values.update(overrides)
        return cls(**values)

    def replace(self, **overrides):
        return dataclasses.replace(self, **overrides)

    def as_dict(self) -> dict:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}


MAX_BATCH_SIZE = 1024
RESIZE_MODES = ("squash", "center-crop", "letterbox")
DEVICES = ("auto", "cpu", "cuda", "mps")
DTYPES = ("auto", "float32", "bfloat16", "float16", "int8")


@dataclasses.dataclass
class RunOptions(Settings):
    """How a run goes over a collection; none of these change a result's value.

    `resize`, `device` and `dtype` go to the model step; the rest to the engine.
    """

    resize: str = setting("squash", "how images meet the model's square input", choices=RESIZE_MODES)
    batch_size: int = setting(16, "images per model step", min=1, max=MAX_BATCH_SIZE, cli_flags=("-B",), advanced=True)
    device: str = setting("auto", "where the model runs", choices=DEVICES, advanced=True)
    dtype: str = setting(
        "auto", "weights and activations (auto: float32 on CPU, bfloat16 on GPUs)", choices=DTYPES, advanced=True
    )
    num_workers: int | None = setting(
        None, "decode threads, 0 decodes inline (None: one per core)", min=0, advanced=True, surfaces=("sdk", "cli")
    )
    shard: str | None = setting(None, "'I/N': only shard I of N, for N parallel workers", advanced=True)
    overwrite: bool = setting(False, "recompute and replace results already in the field")
    progress: Any = setting(True, "True, False, None or a callable progress(done, total)", surfaces=("sdk",))
    chunk_size: int = setting(256, "results per bulk write", min=1, surfaces=("sdk",))
    chunk_seconds: float = setting(10.0, "longest time a result waits before it is written", min=0, surfaces=("sdk",))

    def __post_init__(self):
        super().__post_init__()
        if not isinstance(self.batch_size, int) or isinstance(self.batch_size, bool):
            raise ValueError(f"`batch_size` must be in 1..{MAX_BATCH_SIZE}, got {self.batch_size!r}")
        from fiftyone_blip.engine import parse_shard

        parse_shard(self.shard)

    @property
    def shard_spec(self) -> tuple[int, int] | None:
        from fiftyone_blip.engine import parse_shard

        return parse_shard(self.shard)
