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
from typing import Any, ClassVar

# Surfaces a setting is offered on; `progress`, a Python callable, is SDK-only.
SURFACES = ("sdk", "cli", "app")
SDK_CLI = ("sdk", "cli")


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
    envvar: str | None = None,
    cli_help: str | None = None,
    choice_labels: dict | None = None,
    form_default: Any = dataclasses.MISSING,
    form_when: dict | None = None,
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
        cli_flags: CLI flags. Short ones ("-b",) go beside --name-with-dashes;
            a long one replaces it ("--workers"). For a setting that is True
            by default, the flags switch it off ("--no-margin").
        envvar: the environment variable the CLI reads the setting from (None).
        cli_help: the CLI help where it differs from `help` (a flag that
            switches a setting off says what switching it off does).
        choice_labels: form labels of the choices, by value (None: the values).
        form_default: what the form suggests where the default (None) only
            means "not chosen" (e.g. a threshold when flagging by threshold).
        form_when: the form shows the setting only when these params hold one
            of the given values, e.g. {"strategy": ("beam", "diverse-beam")}.
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
        envvar=envvar,
        cli_help=cli_help,
        choice_labels=choice_labels,
        form_default=form_default,
        form_when=form_when,
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
        raise ValueError(f"`{name}` must be one of {', '.join(map(str, choices))}; got {value!r}")
    lo, hi = metadata.get("min"), metadata.get("max")
    if value is None or (lo is None and hi is None) or isinstance(value, bool):
        return
    if not isinstance(value, (int, float)) or (isinstance(value, float) and math.isnan(value)):
        raise ValueError(f"`{name}` must be a number, got {value!r}")
    exclusive = metadata.get("min_exclusive")
    too_low = lo is not None and (value <= lo if exclusive else value < lo)
    if too_low or (hi is not None and value > hi):
        low = f"above {lo}" if exclusive else f"at least {lo}"
        if lo is not None and hi is not None:
            span = f"{low} and at most {hi}" if exclusive else f"from {lo} to {hi}"
            raise ValueError(f"`{name}` must be {span}, got {value!r}")
        if lo is not None:
            raise ValueError(f"`{name}` must be {low}, got {value!r}")
        raise ValueError(f"`{name}` must be at most {hi}, got {value!r}")


def form_shows(field: dataclasses.Field, params: dict) -> bool:
    """Whether a form with `params` shows `field`: each `form_when` condition whose key is given holds."""
    when = field.metadata.get("form_when") or {}
    return all(params.get(key) in allowed for key, allowed in when.items() if params.get(key) is not None)


def form_default(cls, field: dataclasses.Field):
    """What a form suggests for `field`: its `form_default`, else the (run) default."""
    suggestion = field.metadata.get("form_default", dataclasses.MISSING)
    if suggestion is not dataclasses.MISSING:
        return suggestion
    return cls.run_defaults.get(field.name, cls.defaults()[field.name])


def _declared_float(field: dataclasses.Field) -> bool:
    """Whether a settings field is declared a float (`float` or `float | None`)."""
    return str(field.type).split("|")[0].strip() in ("float", "<class 'float'>")


class Settings:
    """Mixin for settings dataclasses: declared checks, `from_params`, `replace`, `as_dict`.

    `run_defaults` holds the `RunOptions` defaults that differ for a
    capability (heatmaps step 8 images at a time), read by every surface.
    """

    run_defaults: ClassVar[dict] = {}

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
    def names(cls) -> set[str]:
        return {f.name for f in dataclasses.fields(cls)}

    @classmethod
    def declared(cls, name: str) -> dataclasses.Field:
        """The declared field `name` (not `field`, which is a setting of several classes)."""
        return next(f for f in dataclasses.fields(cls) if f.name == name)

    @classmethod
    def defaults(cls) -> dict:
        return {
            f.name: (f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default)
            for f in dataclasses.fields(cls)
        }

    @classmethod
    def from_params(cls, params: dict, **overrides):
        """Settings from a dict named like the SDK keywords (an operator's `ctx.params`).

        Keys that are not fields are ignored; a missing, None or empty value
        takes the default, so a form that leaves a field empty gets the same
        result as the SDK. A field the form hides (`form_when` does not hold
        for params that are given) is ignored too: a value left from an
        earlier choice does not count.
        """
        params = params or {}
        values = {}
        for f in dataclasses.fields(cls):
            if not form_shows(f, params):
                continue
            value = params.get(f.name)
            if value is None or value == "":
                # a shown input with no value yet stands for its form suggestion
                when = f.metadata.get("form_when")
                chosen = when and all(params.get(key) is not None for key in when)
                value = f.metadata.get("form_default", dataclasses.MISSING) if chosen else None
                if value is dataclasses.MISSING or value is None:
                    continue
            if isinstance(value, int) and not isinstance(value, bool) and _declared_float(f):
                # JSON (the App's params) has one number type: 1.0 arrives as 1. Settings go into a run's
                # fingerprint, so a form's 1 must be the SDK's 1.0, or a re-run would refuse its own results.
                value = float(value)
            values[f.name] = value
        values.update(overrides)
        return cls(**values)

    @classmethod
    def resolve(cls, settings=None, options=None, overrides: dict | None = None, run_options: bool = True):
        """(settings, options) from an SDK call's `settings=`, `options=` and keyword overrides.

        A keyword that names a field of this class overrides `settings` (None:
        the defaults); one that names a `RunOptions` field overrides `options`
        (None: the defaults, with `run_defaults`). Any other keyword is a
        TypeError, as for an ordinary function.
        """
        overrides = dict(overrides or {})
        mine = {k: overrides.pop(k) for k in list(overrides) if k in {f.name for f in dataclasses.fields(cls)}}
        run = {}
        if run_options:
            run_names = {f.name for f in dataclasses.fields(RunOptions)}
            run = {k: overrides.pop(k) for k in list(overrides) if k in run_names}
        if overrides:
            raise TypeError(f"unexpected keyword argument {next(iter(overrides))!r}")
        if settings is not None and not isinstance(settings, cls):
            raise ValueError(f"`settings` must be a {cls.__name__}, got {type(settings).__name__}")
        settings = cls(**mine) if settings is None else settings.replace(**mine) if mine else settings
        if not run_options:
            return settings
        if options is None:
            options = RunOptions(**{**cls.run_defaults, **run})
        elif run:
            options = options.replace(**run)
        return settings, options

    @classmethod
    def doc(cls, surface: str = "sdk") -> str:
        """One line per setting: name, help, allowed values and default, for docstrings."""
        lines = []
        for f in cls.fields(surface):
            meta = f.metadata
            text = meta.get("help", "")
            if meta.get("choices"):
                text += ": " + ", ".join(repr(c) for c in meta["choices"])
            lo, hi = meta.get("min"), meta.get("max")
            if lo is not None and hi is not None:
                text += f", in ({lo}, {hi}]" if meta.get("min_exclusive") else f", {lo}..{hi}"
            default = cls.run_defaults.get(f.name, cls.defaults()[f.name])
            if not (default is None and ("(None:" in text or "(default:" in text or "(empty:" in text)):
                text += f" ({default!r})"
            lines.append(f"    {f.name}: {text}.")
        return "\n".join(lines)

    def replace(self, **overrides):
        return dataclasses.replace(self, **overrides)

    def as_dict(self) -> dict:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}


def documented(*classes):
    """Fills a function docstring's `{settings}` with each class's settings, one line each.

    The help, bounds and defaults then live only on the dataclasses.
    """

    def decorate(function):
        text = "\n".join(c.doc().replace("\n    ", "\n        ").replace("    ", "        ", 1) for c in classes)
        function.__doc__ = function.__doc__.replace("{settings}", text.lstrip())
        return function

    return decorate


MAX_BATCH_SIZE = 1024


def check_revision(revision) -> str | None:
    """A hub revision is a non-empty name without spaces (branch, tag or commit), or None."""
    if revision is not None and not (
        isinstance(revision, str) and revision.strip() and not any(c.isspace() for c in revision)
    ):
        raise ValueError(f"`revision` must be a branch, tag or commit name (no spaces), got {revision!r}")
    return revision


def match_model_setting(purpose: str = ""):
    """The image-text matching model setting (`-m`, FIFTYONE_BLIP_MATCH_MODEL), declared once for every
    capability that scores with BLIP's retrieval heads; `purpose` opens its help."""
    return setting(
        None,
        f"{purpose}a BLIP image-text matching model (BlipForImageTextRetrieval): a Hugging Face hub id, a model "
        "folder or 'shapes-tiny' (default: Salesforce/blip-itm-base-coco)",
        cli_flags=("-m",),
        envvar="FIFTYONE_BLIP_MATCH_MODEL",
    )


def revision_setting():
    """The `revision` setting, declared once for `RunOptions` and adapter training."""
    return setting(
        None,
        "the model's Hugging Face hub revision: a branch, tag or commit (empty: the default branch)",
        advanced=True,
    )


RESIZE_MODES = ("squash", "center-crop", "letterbox")
DEFAULT_EMBEDDING_FIELD = "blip_embedding"
DEFAULT_BRAIN_KEY = "blip_sim"
DEVICES = ("auto", "cpu", "cuda", "mps")
DTYPES = ("auto", "float32", "bfloat16", "float16", "int8")


def check_brain_key(brain_key) -> str:
    """A brain key by FiftyOne's own rule for run keys (`BaseRun.validate_run`: a Python identifier), which
    FiftyOne applies only when an index is saved, after every image was embedded."""
    if not isinstance(brain_key, str) or not brain_key.isidentifier():
        raise ValueError(
            f"`brain_key` must be letters, digits and underscores, not starting with a digit, got {brain_key!r}"
        )
    return brain_key


def parse_shard(shard: str | tuple[int, int] | None) -> tuple[int, int] | None:
    """Parses a shard spec "I/N" into (I, N), checking 0 <= I < N."""
    if shard is None or shard == "":
        return None
    if isinstance(shard, str):
        try:
            index, count = (int(part) for part in shard.split("/"))
        except ValueError:
            raise ValueError(f"`shard` must be a part and a number of parts like '0/4', got {shard!r}") from None
    else:
        index, count = shard
    if count < 1 or not 0 <= index < count:
        raise ValueError(
            f"`shard` must be a part and a number of parts, parts counted from 0 (the last of 4 is 3/4), "
            f"got {index}/{count}"
        )
    return index, count


@dataclasses.dataclass
class RunOptions(Settings):
    """How a run goes over a collection and which model revision it loads.

    `revision`, `device` and `dtype` go to the model loader, `resize` and
    `fast_decode` to the decoding of images, the rest to the engine. The
    revision and dtype are part of the model's identity, and `resize` and
    `fast_decode` change the model's input: all four are in every result's
    fingerprint. The rest do not change a result's value (the batch size: checked
    in float32 and int8 by the parity and int8 tests).
    """

    resize: str = setting(
        "squash",
        "how images meet the model's square input",
        choices=RESIZE_MODES,
        choice_labels={
            "squash": "Squash to square (BLIP default)",
            "center-crop": "Center crop",
            "letterbox": "Letterbox (pad)",
        },
        advanced=True,
    )
    fast_decode: bool = setting(
        False,
        "decode large JPEGs at 1/2, 1/4 or 1/8 scale: 2-3x less decode time for 2000 px and larger, "
        "but the model's input pixels differ slightly from BLIP's own processor's, and so may results "
        "(off: every pixel decoded)",
        label="Decode large JPEGs faster",
        advanced=True,
    )
    context: float = setting(
        1.0,
        "patches views: grow each object's box by this factor around its center before cropping "
        "(1: the box alone; 2: twice its width and height, clipped to the image)",
        label="Context around objects",
        min=1,
        max=10,
        advanced=True,
    )
    batch_size: int = setting(16, "images per model step", min=1, max=MAX_BATCH_SIZE, advanced=True)
    device: str = setting("auto", "where the model runs", choices=DEVICES, advanced=True, envvar="FIFTYONE_BLIP_DEVICE")
    dtype: str = setting(
        "auto",
        "the number format the model computes in (auto: float32 on CPU, bfloat16 on GPUs; int8: CPU only, "
        "the fastest there)",
        label="Precision",
        choices=DTYPES,
        advanced=True,
    )
    revision: str | None = revision_setting()
    num_workers: int | None = setting(
        None,
        "decode threads, 0 decodes inline (None: one per core, at most 8)",
        min=0,
        advanced=True,
        surfaces=("sdk", "cli"),
        cli_flags=("--workers",),
    )
    shard: str | None = setting(
        None,
        "one part of the run, for several workers side by side: '0/4' is the first of 4 parts, '3/4' the last",
        label="Shard (I/N)",
        advanced=True,
    )
    overwrite: bool = setting(
        False, "recompute and replace results already in the field", label="Recompute samples already done"
    )
    progress: Any = setting(
        True,
        "True for a progress bar, False for none, or a callable progress(done, total)",
        surfaces=("sdk", "cli"),
        cli_flags=("-q", "--quiet"),
        cli_help="No progress bar.",
    )
    chunk_size: int = setting(256, "results per bulk write", min=1, surfaces=("sdk",))
    chunk_seconds: float = setting(10.0, "longest time a result waits before it is written", min=0, surfaces=("sdk",))

    def __post_init__(self):
        super().__post_init__()
        if not isinstance(self.batch_size, int) or isinstance(self.batch_size, bool):
            raise ValueError(f"`batch_size` must be a whole number from 1 to {MAX_BATCH_SIZE}, got {self.batch_size!r}")
        parse_shard(self.shard)
        check_revision(self.revision)

    @property
    def shard_spec(self) -> tuple[int, int] | None:
        return parse_shard(self.shard)


# --- embeddings and search: `embeddings.py` loads FiftyOne at import, so its settings live here ---------


@dataclasses.dataclass
class EmbedSettings(Settings):
    """What `embed` writes and which similarity index it builds."""

    model: str | None = match_model_setting()
    field: str = setting(DEFAULT_EMBEDDING_FIELD, "the embeddings field", label="Embeddings field", cli_flags=("-f",))
    brain_key: str | None = setting(
        DEFAULT_BRAIN_KEY,
        "the similarity index to build, which the App's similarity search lists (empty: embed only)",
        label="Similarity index (brain key)",
        cli_flags=("-b",),
    )
    backend: str | None = setting(
        "blip",
        "how the similarity index answers: 'blip' (stored as FiftyOne's default does; text searches get a "
        "quick search, then careful re-ranking of its best matches, in the App too), 'sklearn' (FiftyOne's "
        "default: quick search only), or e.g. 'lancedb'",
        label="Similarity backend",
        choice_labels={
            "blip": "fiftyone-blip: quick search, then careful re-ranking (in the database)",
            "sklearn": "FiftyOne default: quick search only (in the database)",
            "lancedb": "LanceDB: quick search only (embedded vector database)",
        },
    )

    def __post_init__(self):
        super().__post_init__()
        from fiftyone_blip.fields import check_field_name

        check_field_name(self.field)
        if self.brain_key is not None and not (isinstance(self.brain_key, str) and self.brain_key):
            raise ValueError(f"`brain_key` must be a non-empty name or None, got {self.brain_key!r}")
        if self.brain_key is not None:
            check_brain_key(self.brain_key)

    @classmethod
    def from_params(cls, params: dict, **overrides):
        # the form's "sklearn" choice stands for FiftyOne's default backend
        if (params or {}).get("backend") == "sklearn":
            params = {**params, "backend": None}
        return super().from_params(params, **overrides)


@dataclasses.dataclass
class SearchSettings(Settings):
    """How `search` ranks; not a run over the collection, so no `RunOptions`."""

    k: int = setting(
        20, "how many results, 1 .. the number of samples searched", cli_flags=("-k", "--top-k"), surfaces=SDK_CLI
    )
    brain_key: str = setting(DEFAULT_BRAIN_KEY, "the index built by `embed`", cli_flags=("-b",), surfaces=SDK_CLI)
    model: str | None = setting(
        None,
        "the model the index must use; another is an error (None: the index's own)",
        cli_flags=("-m",),
        surfaces=SDK_CLI,
    )
    rerank: bool = setting(
        False,
        "re-rank the quick search's best matches carefully, with BLIP's matching head (text queries only)",
        surfaces=SDK_CLI,
    )
    shortlist: int | None = setting(
        None, "how many ITC results the ITM head re-scores, >= k (None: max(4k, 128))", surfaces=SDK_CLI
    )
    device: str = setting(
        "auto", "where the query runs", choices=DEVICES, envvar="FIFTYONE_BLIP_DEVICE", surfaces=SDK_CLI
    )
