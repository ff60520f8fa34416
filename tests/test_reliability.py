"""Reliability and security under bad input, crashes and untrusted files.

Everything here runs once per capability: `CAPABILITIES` lists caption, embed
(with its similarity index), match (label QA over a Classification) and
heatmaps (cross-attention over a text field). A new capability is one more
`Capability` entry; the corpus and bounds tests below then cover it too.

- The bad-input corpus (`CORPUS`) is made by the test in a temporary folder:
  good files (1x1, a 20000x10 strip, 16-bit grayscale, CMYK JPEG, palette with
  transparency, animated GIF, EXIF-rotated JPEG, WebP, multi-page TIFF, a path
  with spaces and non-ASCII characters) and bad ones (missing, 0 bytes,
  truncated JPEG, random bytes named .jpg, a PNG whose header claims
  100000x100000 pixels, a named pipe, a folder named .jpg). Animated GIFs and
  multi-page TIFFs are read at their first frame. Each good sample gets a
  result, each bad one an error naming the cause, the summary counts both,
  a watchdog fails the test if a run hangs, and the CLI run's peak memory is
  measured.
- Crash safety: worker processes are SIGKILLed five times at seeded random
  moments, then the run is resumed; two shard workers run side by side and
  one is killed and relaunched. Workers are this file run as a script (see
  `_zygote_main`); their model step is slowed down so kills land mid-run on
  any machine. These exercise the engine that every capability shares, so
  they run for the capabilities marked `crash` (caption and embed) only.
- Security: no pickle loading, no remote code, safetensors only, non-BLIP
  configs refused, and every bound checked before any work (SDK, CLI, App
  operator): per capability (`bad_settings`), search's `k` and query, and a
  heatmap layer the model does not have. Adapter names cannot escape the
  registry ("../x", absolute paths, names with separators: nothing under the
  adapter home is even opened), links out of the registry are neither listed
  nor loaded, and an adapter whose weights are only a pickle
  (adapter_model.bin) is refused without unpickling it. Heatmap PNGs
  (maps_dir) and overlays land only under their folders, whatever the text,
  the words or the field.
"""

from __future__ import annotations

import ast
import dataclasses
import io
import os
import random
import re
import signal
import struct
import subprocess
import sys
import threading
import time
import traceback
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
URI_CAPTION = "@fiftyone-blip/blip/caption_samples"
URI_EMBED = "@fiftyone-blip/blip/compute_embeddings"
URI_MISLABELS = "@fiftyone-blip/blip/find_mislabels"
URI_HEATMAPS = "@fiftyone-blip/blip/compute_heatmaps"


# --------------------------------------------------------------------------------------
# Capabilities under test: one entry each.
# --------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class BadSetting:
    """A setting out of bounds: as CLI words, as SDK/operator params, and the message expected."""

    label: str
    cli: tuple[str, ...]
    params: dict
    message: str
    # where the operator's form offers a dropdown, FiftyOne's own validation refuses an
    # execution with a value outside it, in its own words
    operator_message: str | None = None


@dataclasses.dataclass(frozen=True)
class Capability:
    """How the tests reach one capability.

    Attributes:
        name: the capability's name (test ids).
        field: its main result field; `{field}_error` and `{field}_run` come from the engine.
        result_fields: every field a good sample must hold after a run.
        is_result: checks the main field's value on a good sample.
        make_task: () -> `engine.Task` with the test model (runs in crash-test workers).
        sdk: (samples, **options) -> `RunSummary`, with the test model.
        cli: dataset name -> the CLI words of a run with the test model.
        operator: the App operator's URI and the params of a valid run.
        bad_settings: out-of-bounds settings that must be refused before any work.
        crash: also run the SIGKILL and shard-kill tests (see `CRASH_CAPABILITIES`).
    """

    name: str
    field: str
    result_fields: tuple[str, ...]
    is_result: Callable[[object], bool]
    make_task: Callable[[], object] | None
    sdk: Callable[..., object]
    cli: Callable[[str], list[str]]
    operator: tuple[str, dict]
    bad_settings: tuple[BadSetting, ...]
    crash: bool = False


def _caption_task():
    from fiftyone_blip import captions, models

    return captions.caption_task(models.load_model("shapes-tiny", device="cpu"), captions.CaptionSettings())


def _caption_sdk(samples, **options):
    import fiftyone_blip

    return fiftyone_blip.caption(samples, model="shapes-tiny", device="cpu", progress=False, **options)


_NOT_OFFERED = "Path: %s. Reason: Invalid enum value"


def _run_bounds(cli_field: str = "-f") -> tuple[BadSetting, ...]:
    """The engine's bounds, which every capability shares."""
    return (
        BadSetting("batch-over-1024", ("--batch-size", "1025"), dict(batch_size=1025), "batch_size"),
        BadSetting("batch-0", ("--batch-size", "0"), dict(batch_size=0), "batch_size"),
        BadSetting("shard-out-of-range", ("--shard", "2/2"), dict(shard="2/2"), "shard"),
        BadSetting("built-in-field", (cli_field, "filepath"), dict(field="filepath"), "built-in field"),
        BadSetting("path-as-field", (cli_field, "../evil"), dict(field="../evil"), "`field` must be a name"),
    )


CAPTION_BOUNDS = (
    BadSetting("beams-over-10", ("-s", "beam", "--num-beams", "11"), dict(strategy="beam", num_beams=11), "num_beams"),
    BadSetting("beams-0", ("-s", "beam", "--num-beams", "0"), dict(strategy="beam", num_beams=0), "num_beams"),
    BadSetting("new-tokens-over-128", ("--max-new-tokens", "129"), dict(max_new_tokens=129), "max_new_tokens"),
    BadSetting("new-tokens-0", ("--max-new-tokens", "0"), dict(max_new_tokens=0), "max_new_tokens"),
    # adapter names are language codes, never paths (more in the adapter security tests below)
    *(
        BadSetting(label, ("--language", name), dict(language=name), "language code", _NOT_OFFERED % "language")
        for label, name in (("language-as-path", "../x"), ("language-absolute", "/etc"))
    ),
    *_run_bounds(),
)

EMBED_BOUNDS = _run_bounds()

MATCH_BOUNDS = (
    BadSetting("template-without-label", ("--template", "a photo of"), dict(template="a photo of"), "must contain"),
    BadSetting(
        "unsupported-field-type",
        ("--label-field", "tags"),
        dict(label_field="tags"),
        "label QA scores",
        _NOT_OFFERED % "label_field",
    ),
    *_run_bounds(),
)

HEATMAP_BOUNDS = (
    BadSetting("layers-not-indices", ("--layers", "first"), dict(layers="first"), "`layers`"),
    BadSetting("heads-negative", ("--heads=-1",), dict(heads="-1"), "`heads`"),
    BadSetting("heads-not-indices", ("--heads", "one"), dict(heads="one"), "`heads`"),
    BadSetting("map-size-4", ("--map-size", "4"), dict(map_size=4), "map_size"),
    BadSetting("map-size-2000", ("--map-size", "2000"), dict(map_size=2000), "map_size"),
    *_run_bounds(),
)


def _embed_task():
    from fiftyone_blip import embeddings, models

    return embeddings.embedding_task(models.load_model("shapes-tiny", task="match", device="cpu"))


def _embed_sdk(samples, **options):
    import fiftyone_blip

    # builds the similarity index too (over the samples embedded)
    return fiftyone_blip.embed(samples, model="shapes-tiny", device="cpu", progress=False, **options)


def _match_sdk(samples, label_field="gt_label", **options):
    import fiftyone_blip

    result = fiftyone_blip.find_mislabels(
        samples, label_field, model="shapes-tiny", device="cpu", progress=False, **options
    )
    return result["run"]


def _heatmaps_sdk(samples, **options):
    import fiftyone_blip

    options = {"text_field": "gt_caption", **options}
    return fiftyone_blip.heatmaps(samples, model="shapes-tiny", device="cpu", progress=False, **options)


def _is_unit_vector(value) -> bool:
    return isinstance(value, np.ndarray) and value.ndim == 1 and abs(float(np.linalg.norm(value)) - 1) < 1e-3


def _is_probability(value) -> bool:
    return isinstance(value, float) and 0.0 <= value <= 1.0


def _is_heatmap(value) -> bool:
    return value is not None and type(value).__name__ == "Heatmap" and value.map is not None


CAPABILITIES = [
    Capability(
        name="caption",
        field="caption",
        result_fields=("caption", "caption_confidence"),
        is_result=lambda value: isinstance(value, str),
        make_task=_caption_task,
        sdk=_caption_sdk,
        cli=lambda dataset: ["caption", dataset, "-m", "shapes-tiny", "--device", "cpu", "-q"],
        operator=(URI_CAPTION, dict(model="shapes-tiny", field="caption", device="cpu", view_target="DATASET")),
        bad_settings=CAPTION_BOUNDS,
        crash=True,
    ),
    Capability(
        name="embed",
        field="blip_embedding",
        result_fields=("blip_embedding",),
        is_result=_is_unit_vector,
        make_task=_embed_task,
        sdk=_embed_sdk,
        cli=lambda dataset: ["embed", dataset, "-m", "shapes-tiny", "--device", "cpu", "-q"],
        operator=(
            URI_EMBED,
            dict(
                model="shapes-tiny", field="blip_embedding", brain_key="blip_sim", device="cpu", view_target="DATASET"
            ),
        ),
        bad_settings=EMBED_BOUNDS,
        # The crash tests exercise the engine, which all capabilities share; they run for caption
        # (generation: the slowest step) and embed (one forward pass, vector results; the
        # capability most likely sharded over a large dataset). Match and heatmaps add nothing
        # the engine does differently and would cost about a minute more.
        crash=True,
    ),
    Capability(
        name="match",
        field="gt_label_match",
        result_fields=("gt_label_match", "gt_label_match_margin"),
        is_result=_is_probability,
        make_task=None,
        sdk=_match_sdk,
        cli=lambda dataset: [
            "mislabels",
            dataset,
            "--label-field",
            "gt_label",
            "-m",
            "shapes-tiny",
            "--device",
            "cpu",
            "-q",
        ],
        operator=(
            URI_MISLABELS,
            dict(label_field="gt_label", model="shapes-tiny", device="cpu", view_target="DATASET"),
        ),
        bad_settings=MATCH_BOUNDS,
    ),
    Capability(
        name="heatmaps",
        field="heatmap",
        result_fields=("heatmap", "heatmap_words", "heatmap_maps", "heatmap_probs", "heatmap_text"),
        is_result=_is_heatmap,
        make_task=None,
        sdk=_heatmaps_sdk,
        cli=lambda dataset: [
            *("heatmaps", dataset, "-m", "shapes-tiny", "--text-field", "gt_caption", "--device", "cpu", "-q")
        ],
        operator=(
            URI_HEATMAPS,
            dict(
                model="shapes-tiny",
                field="heatmap",
                text_source="field",
                text_field="gt_caption",
                device="cpu",
                view_target="DATASET",
            ),
        ),
        bad_settings=HEATMAP_BOUNDS,
    ),
]
BY_NAME = {capability.name: capability for capability in CAPABILITIES}
CRASH_CAPABILITIES = [capability for capability in CAPABILITIES if capability.crash]
BOUNDS = [(c, bad) for c in CAPABILITIES for bad in c.bad_settings]


def by_capability(test):
    return pytest.mark.parametrize("capability", CAPABILITIES, ids=[c.name for c in CAPABILITIES])(test)


def by_crash_capability(test):
    return pytest.mark.parametrize("capability", CRASH_CAPABILITIES, ids=[c.name for c in CRASH_CAPABILITIES])(test)


# --------------------------------------------------------------------------------------
# The bad-input corpus, made by the test.
# --------------------------------------------------------------------------------------


def _save(image, path: Path, **kwargs) -> Path:
    image.save(path, **kwargs)
    return path


def _picture(width=64, height=48) -> Image.Image:
    """A small image with some structure (a red square on blue)."""
    image = Image.new("RGB", (width, height), (20, 40, 200))
    image.paste((220, 30, 30), (width // 4, height // 4, width // 2, height // 2))
    return image


def _png_claiming(path: Path, width: int, height: int) -> Path:
    """A PNG of a few dozen bytes whose header claims width x height (a decompression bomb)."""

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    body = zlib.compress(b"\x00" * 1024)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", body) + chunk(b"IEND", b""))
    return path


def _truncated_jpeg(path: Path) -> Path:
    buffer = io.BytesIO()
    Image.effect_noise((160, 120), 60).convert("RGB").save(buffer, "JPEG")
    path.write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    return path


def _exif_rotated(path: Path) -> Path:
    exif = Image.Exif()
    exif[0x0112] = 6  # shown rotated 90 degrees clockwise
    return _save(_picture(), path, exif=exif.tobytes())


def _palette_transparent(path: Path) -> Path:
    image = Image.new("P", (40, 30), 0)
    image.putpalette([255, 255, 255, 200, 0, 0] + [0, 0, 0] * 254)
    image.paste(1, (10, 10, 30, 20))
    return _save(image, path, transparency=0)


def _animated_gif(path: Path) -> Path:
    frames = [_picture().quantize(16), Image.new("RGB", (64, 48), (0, 255, 0)).quantize(16)]
    return _save(frames[0], path, save_all=True, append_images=frames[1:], duration=80, loop=0)


def _multipage_tiff(path: Path) -> Path:
    pages = [_picture(), Image.new("RGB", (64, 48), (0, 255, 0))]
    return _save(pages[0], path, save_all=True, append_images=pages[1:])


def _non_ascii_path(path: Path) -> Path:
    folder = path.parent / "folder with spaces Ünïcødé"
    folder.mkdir(exist_ok=True)
    return _save(_picture(), folder / "photo 写真 ✓ é.jpg")


def _fifo(path: Path) -> Path:
    os.mkfifo(path)  # opening it for reading would wait for a writer forever
    return path


def _folder(path: Path) -> Path:
    path.mkdir()
    return path


@dataclasses.dataclass(frozen=True)
class Case:
    """One corpus file: how it is made, and the cause its error must name (None: it decodes)."""

    name: str
    filename: str
    make: Callable[[Path], Path]
    cause: str | None = None


CORPUS = [
    Case("plain-jpeg", "plain.jpg", lambda p: _save(_picture(), p)),
    Case("1x1", "one.png", lambda p: _save(Image.new("RGB", (1, 1), (200, 0, 0)), p)),
    Case("strip-20000x10", "strip.png", lambda p: _save(_picture(20000, 10), p)),
    Case(
        "gray-16-bit",
        "gray16.png",
        lambda p: _save(Image.fromarray((np.arange(64 * 48, dtype=np.uint16) * 20).reshape(48, 64)), p),
    ),
    Case("cmyk-jpeg", "cmyk.jpg", lambda p: _save(_picture().convert("CMYK"), p)),
    Case("palette-transparency", "palette.png", _palette_transparent),
    Case("animated-gif", "animated.gif", _animated_gif),
    Case("exif-rotated", "rotated.jpg", _exif_rotated),
    Case("webp", "picture.webp", lambda p: _save(_picture(), p, format="WEBP")),
    Case("multi-page-tiff", "pages.tiff", _multipage_tiff),
    Case("spaces-non-ascii-path", "unused", _non_ascii_path),
    Case("missing", "missing.jpg", lambda p: p, cause="file not found"),
    Case("zero-bytes", "empty.jpg", lambda p: (p.write_bytes(b""), p)[1], cause=r"empty file \(0 bytes\)"),
    Case("truncated-jpeg", "truncated.jpg", _truncated_jpeg, cause="truncated"),
    Case("random-bytes", "random.jpg", lambda p: (p.write_bytes(os.urandom(4096)), p)[1], cause="not an image"),
    Case(
        "decompression-bomb",
        "bomb.png",
        lambda p: _png_claiming(p, 100_000, 100_000),
        cause=r"too large.*10000000000 pixels",
    ),
    Case("named-pipe", "pipe.jpg", _fifo, cause="not a regular file"),
    Case("folder", "folder.jpg", _folder, cause="directory"),
]
GOOD = [case.name for case in CORPUS if case.cause is None]
BAD = [case.name for case in CORPUS if case.cause is not None]


@pytest.fixture(scope="module")
def corpus_base(fo, tmp_path_factory):
    """The corpus files and a dataset of one sample per file (field `case`)."""
    folder = tmp_path_factory.mktemp("bad-input-corpus")
    name = "reliability-corpus"
    if fo.dataset_exists(name):
        fo.delete_dataset(name)
    dataset = fo.Dataset(name)
    samples = []
    for i, case in enumerate(CORPUS):
        path = case.make(folder / case.filename)
        label = ("circle", "square")[i % 2]  # two classes: every label gets a margin
        sample = fo.Sample(filepath=str(path), case=case.name, gt_caption=f"a red {label}")
        sample["gt_label"] = fo.Classification(label=label)
        samples.append(sample)
    dataset.add_samples(samples, progress=False)
    yield dataset
    fo.delete_dataset(name)


@pytest.fixture
def corpus(fo, corpus_base, request):
    """A writable copy of the corpus dataset for one test."""
    name = "rc-" + re.sub(r"\W", "-", request.node.name)[:40]
    if fo.dataset_exists(name):
        fo.delete_dataset(name)
    dataset = corpus_base.clone(name)
    yield dataset
    fo.delete_dataset(name)


def _env() -> dict:
    """The environment of the processes a test starts: one torch thread each.

    On a machine whose cores are shared, two spinning OpenMP threads per process made
    the tiny model's step about ten times slower here; one thread keeps runs short.
    """
    return {**os.environ, "OMP_NUM_THREADS": "1"}


@pytest.fixture
def one_torch_thread():
    """One torch thread in this process for the test (see `_env`)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _finishes(function, timeout: float):
    """Runs `function()` in a thread; fails the test if it has not returned after `timeout` s."""
    outcome = {}

    def target():
        try:
            outcome["value"] = function()
        except BaseException as error:  # re-raised in the test's thread
            outcome["error"] = error

    thread = threading.Thread(target=target, name="reliability-run", daemon=True)
    thread.start()
    thread.join(timeout)
    assert not thread.is_alive(), f"the run did not finish within {timeout} s"
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]


def _check_outcomes(dataset, capability: Capability) -> None:
    """Each good sample holds a result and no error; each bad one no result and an error naming its cause."""
    dataset.reload()
    field, error_field, run_field = capability.field, f"{capability.field}_error", f"{capability.field}_run"
    causes = {case.name: case.cause for case in CORPUS}
    wrong = []
    rows = dataset.values(["case", error_field, run_field, *capability.result_fields])
    for case, error, run, *results in zip(*rows):
        cause = causes[case]
        if cause is None:
            ok = error is None and run is not None and capability.is_result(results[0])
            ok = ok and all(value is not None for value in results)
        else:
            ok = results[0] is None and run is None and bool(error) and re.search(cause, error) is not None
            ok = ok and "\n" not in error
        if not ok:
            wrong.append(f"{case}: error={error!r} result={results[0]!r}")
    assert not wrong, "unexpected outcomes:\n" + "\n".join(wrong)
    # one model and settings: the stamp's part before ":" (after it, a digest of each sample's inputs)
    assert len({run.split(":")[0] for run in dataset.exists(field).values(run_field)}) == 1


@by_capability
def test_sdk_finishes_over_the_bad_input_corpus(corpus, capability, one_torch_thread):
    import fiftyone_blip

    summary = _finishes(lambda: capability.sdk(corpus, batch_size=4), timeout=300)
    assert (summary.total, summary.done, summary.failed, summary.skipped) == (len(CORPUS), len(GOOD), len(BAD), 0)
    _check_outcomes(corpus, capability)
    record = fiftyone_blip.runs(corpus)[-1]
    assert (record["status"], record["done"], record["failed"]) == ("completed", len(GOOD), len(BAD))

    # Run again: good samples are skipped, bad ones retried (and still fail, with the same causes).
    again = _finishes(lambda: capability.sdk(corpus, batch_size=4), timeout=300)
    assert (again.done, again.failed, again.skipped) == (0, len(BAD), len(GOOD))
    _check_outcomes(corpus, capability)


def _run_measured(args: list[str], timeout: float, log: Path) -> tuple[int, str, int]:
    """Runs a command; returns (exit code, output, peak RSS in bytes). Kills it after `timeout` s."""
    with open(log, "wb") as out:
        process = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, env=_env())
    deadline = time.monotonic() + timeout
    while True:
        pid, status, usage = os.wait4(process.pid, os.WNOHANG)
        if pid:
            break
        if time.monotonic() > deadline:
            os.kill(process.pid, signal.SIGKILL)
            os.wait4(process.pid, 0)
            pytest.fail(f"{' '.join(args)} did not finish within {timeout} s:\n{log.read_text()[-2000:]}")
        time.sleep(0.2)
    process.returncode = os.waitstatus_to_exitcode(status)  # reaped here; keep Popen from waiting again
    return process.returncode, log.read_text(errors="replace"), usage.ru_maxrss * 1024


# The CLI process (FiftyOne, torch, transformers, the model) stays near 0.7 GB; decoding the
# bomb's claimed 100000x100000 pixels would take 30 GB.
MAX_RSS = 2 * 1024**3


@by_capability
def test_cli_finishes_over_the_bad_input_corpus_in_bounded_memory(corpus, capability, tmp_path):
    args = [sys.executable, "-m", "fiftyone_blip.cli", *capability.cli(corpus.name)]
    code, output, peak = _run_measured(args, timeout=300, log=tmp_path / "cli.log")
    assert code == 0, output[-2000:]
    expected = f"{len(GOOD)} done, {len(BAD)} failed, 0 skipped of {len(CORPUS)}"
    assert expected in output, output[-2000:]
    _check_outcomes(corpus, capability)
    assert peak < MAX_RSS, f"peak RSS {peak / 1e9:.2f} GB"


# --------------------------------------------------------------------------------------
# Crash safety: SIGKILL at random moments, then resume; shard workers killed and relaunched.
# --------------------------------------------------------------------------------------

CHUNK = 8  # results per bulk write in the workers: small, so kills land between and inside writes
THROTTLE_S = 0.1  # the workers' model step sleeps this long per batch of 4: at most 40 samples/s


def _zygote_main() -> None:
    """`python tests/test_reliability.py zygote`: forks engine workers on request.

    Starting a fresh interpreter (FiftyOne, torch, transformers, the model) took
    20-30 s per worker on a busy 2-core machine; this process pays that once and
    forks each worker from it. A forked worker is a process of its own: it opens
    its own database connection, writes through the engine like any run, and is
    SIGKILLed by the test. The model is loaded before forking; the database is
    touched only in the workers. Torch runs one thread (OMP_NUM_THREADS=1), so no
    thread pool is split by fork.

    Commands on stdin, one reply line each on stdout:
        start CAPABILITY DATASET SHARD|-  ->  pid PID
        poll PID                          ->  running | exit CODE
    """
    import torch
    from transformers.utils import logging as hf_logging

    torch.set_num_threads(1)
    hf_logging.disable_progress_bar()
    # bound: the model loads here, before forking, and the workers wrap its step
    tasks = {capability.name: capability.make_task().bound() for capability in CRASH_CAPABILITIES}
    if threading.active_count() != 1:
        print(f"warning: {threading.active_count()} threads before forking", file=sys.stderr, flush=True)
    print("ready", flush=True)
    for line in sys.stdin:
        command, *args = line.split()
        if command == "start":
            name, dataset_name, shard = args
            pid = os.fork()
            if pid == 0:
                _worker(tasks[name], dataset_name, None if shard == "-" else shard)
            reply = f"pid {pid}"
        elif command == "poll":
            pid, status = os.waitpid(int(args[0]), os.WNOHANG)
            reply = "running" if pid == 0 else f"exit {os.waitstatus_to_exitcode(status)}"
        else:
            reply = f"unknown command {command!r}"
        print(reply, flush=True)


def _worker(task, dataset_name: str, shard: str | None) -> None:
    """A forked worker: one engine run with a slowed-down model step, then exit (never returns)."""
    code = 1
    try:
        os.dup2(2, 1)  # the zygote's stdout carries its replies
        os.dup2(os.open(os.devnull, os.O_RDONLY), 0)
        import fiftyone as fo

        from fiftyone_blip import engine
        from fiftyone_blip.settings import RunOptions

        fast_step = task.step

        def slow_step(inputs):
            time.sleep(THROTTLE_S)
            return fast_step(inputs)

        dataset = fo.load_dataset(dataset_name)
        task = dataclasses.replace(task, step=slow_step)
        options = RunOptions(batch_size=4, shard=shard, chunk_size=CHUNK, progress=False, num_workers=1)
        engine.run(dataset, task, options)
        code = 0
    except BaseException:
        traceback.print_exc()
    finally:
        sys.stderr.flush()
        os._exit(code)


class Zygote:
    """The test's handle on `_zygote_main`: start workers, SIGKILL them, wait for them."""

    def __init__(self, log: Path):
        with open(log, "wb") as err:
            self.process = subprocess.Popen(
                [sys.executable, __file__, "zygote"],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=err,
                env=_env(),
                text=True,
                bufsize=1,
            )
        self.log = log
        self.pids: set[int] = set()
        assert self._read() == "ready", f"the worker zygote did not start:\n{self.tail()}"

    def tail(self) -> str:
        return self.log.read_text(errors="replace")[-3000:]

    def _read(self) -> str:
        return self.process.stdout.readline().strip()

    def _ask(self, line: str) -> str:
        self.process.stdin.write(line + "\n")
        self.process.stdin.flush()
        reply = self._read()
        assert reply, f"the worker zygote died:\n{self.tail()}"
        return reply

    def start(self, capability: Capability, dataset, shard: str | None = None) -> int:
        pid = int(self._ask(f"start {capability.name} {dataset.name} {shard or '-'}").split()[1])
        self.pids.add(pid)
        return pid

    def poll(self, pid: int) -> int | None:
        """The worker's exit code (negative: killed by that signal), or None while it runs."""
        reply = self._ask(f"poll {pid}")
        if reply == "running":
            return None
        self.pids.discard(pid)
        return int(reply.split()[1])

    def wait(self, pid: int, timeout: float) -> int:
        deadline = time.monotonic() + timeout
        while (code := self.poll(pid)) is None:
            if time.monotonic() > deadline:
                self.kill(pid)
                pytest.fail(f"worker {pid} did not finish within {timeout} s:\n{self.tail()}")
            time.sleep(0.2)
        return code

    def kill(self, pid: int) -> int:
        os.kill(pid, signal.SIGKILL)
        return self.wait(pid, timeout=60)

    def close(self) -> None:
        for pid in list(self.pids):
            self.kill(pid)
        self.process.stdin.close()
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()


@pytest.fixture(scope="module")
def zygote(fo, tmp_path_factory):
    started = Zygote(tmp_path_factory.mktemp("zygote") / "workers.log")
    yield started
    started.close()


def _written(dataset, capability: Capability, ids: set[str] | None = None) -> dict[str, tuple]:
    """{sample id: (result, fingerprint, last modified)} of the samples holding a result now."""
    dataset.reload()
    field, run_field = capability.field, f"{capability.field}_run"
    schema = dataset.get_field_schema()
    if field not in schema or run_field not in schema:  # a worker is still declaring its fields
        return {}
    rows = dataset.exists(field).values(["id", field, run_field, "last_modified_at"])
    # vectors (embed) compare as bytes
    return {
        sid: tuple(v.tobytes() if isinstance(v, np.ndarray) else v for v in rest)
        for sid, *rest in zip(*rows)
        if ids is None or sid in ids
    }


def _wait_for(condition, timeout: float, interval: float = 0.2) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(interval)
    return False


def _assert_kept(before: dict, after: dict) -> None:
    """Every result written before is still there, unchanged and never rewritten."""
    lost = [sid for sid in before if sid not in after]
    changed = [sid for sid in before if sid in after and after[sid] != before[sid]]
    assert not lost and not changed, f"{len(lost)} results lost, {len(changed)} rewritten"


@pytest.fixture
def five_hundred(repeated_shapes):
    """500 shapes samples (the 48 test images repeated) in a fresh dataset."""
    return repeated_shapes("reliability-500", 500)


@by_crash_capability
def test_five_sigkills_at_random_moments_then_resume(five_hundred, capability, zygote, one_torch_thread):
    import fiftyone_blip

    dataset, field = five_hundred, capability.field
    rng = random.Random(9)
    written: dict = {}
    for attempt in range(5):
        pid = zygote.start(capability, dataset)
        # each kill comes after this worker wrote at least one chunk, at a random moment after it
        target = len(written) + CHUNK
        progressed = _wait_for(lambda t=target: len(_written(dataset, capability)) >= t, timeout=180)
        ended = zygote.poll(pid)
        time.sleep(rng.uniform(0.0, 0.6))
        code = zygote.kill(pid) if ended is None else ended
        assert progressed, f"attempt {attempt}: no progress (worker exit code {code})\n{zygote.tail()}"
        assert code == -signal.SIGKILL, f"attempt {attempt}: the worker ended by itself ({code}) before the kill"
        now = _written(dataset, capability)
        _assert_kept(written, now)
        assert len(written) < len(now) < len(dataset)
        written = now

    records = fiftyone_blip.runs(dataset)
    assert [r["status"] for r in records] == ["interrupted"] * 5
    summary = capability.sdk(dataset)
    assert (summary.skipped, summary.done, summary.failed) == (len(written), len(dataset) - len(written), 0)

    final = _written(dataset, capability)
    _assert_kept(written, final)
    assert len(final) == len(dataset) == 500  # every sample has a result, and no sample was added
    assert len({run for _, run, _ in final.values()}) == 1
    assert dataset.count(f"{field}_error") == 0
    records = fiftyone_blip.runs(dataset)
    assert [r["status"] for r in records] == ["interrupted"] * 5 + ["completed"]
    # Each result was counted once. A kill between a bulk write and its count update can leave
    # at most one chunk of a killed run uncounted.
    counted = sum(r["done"] for r in records)
    assert len(dataset) - 5 * CHUNK <= counted <= len(dataset)


@by_crash_capability
def test_shard_worker_killed_and_relaunched_completes_without_duplicates(five_hundred, capability, zygote):
    import fiftyone_blip
    from fiftyone_blip import engine

    dataset, field = five_hundred, capability.field
    ids = dataset.values("id")
    shard0 = {sid for sid in ids if engine.shard_of(sid, 2) == 0}
    shard1 = set(ids) - shard0

    first = zygote.start(capability, dataset, "0/2")
    other = zygote.start(capability, dataset, "1/2")
    progressed = _wait_for(lambda: len(_written(dataset, capability, shard0)) >= CHUNK, timeout=180)
    time.sleep(random.Random(2).uniform(0.0, 0.6))
    killed_code = zygote.kill(first)
    at_kill = _written(dataset, capability, shard0)
    assert progressed, zygote.tail()
    assert killed_code == -signal.SIGKILL, f"the worker ended by itself ({killed_code}) before the kill"
    assert 0 < len(at_kill) < len(shard0)
    assert zygote.wait(other, timeout=300) == 0, zygote.tail()
    relaunched = zygote.start(capability, dataset, "0/2")
    assert zygote.wait(relaunched, timeout=300) == 0, zygote.tail()

    final = _written(dataset, capability)
    assert len(dataset) == 500 and set(final) == set(ids)  # complete, and no sample added
    _assert_kept(at_kill, final)  # what the killed worker wrote was kept, not redone
    assert len({run for _, run, _ in final.values()}) == 1
    assert dataset.count(f"{field}_error") == 0

    records = {(r["shard"], r["status"]): r for r in fiftyone_blip.runs(dataset)}
    assert sorted(records) == [("0/2", "completed"), ("0/2", "interrupted"), ("1/2", "completed")]
    again, other_record = records[("0/2", "completed")], records[("1/2", "completed")]
    assert (other_record["total"], other_record["done"], other_record["skipped"]) == (len(shard1), len(shard1), 0)
    assert (again["total"], again["skipped"], again["done"]) == (len(shard0), len(at_kill), len(shard0) - len(at_kill))
    assert len({r["pid"] for r in records.values()}) == 3


# --------------------------------------------------------------------------------------
# Security: untrusted model folders, no pickle, no remote code, bounds before any work.
# --------------------------------------------------------------------------------------

# Everything that ships or runs: the package, the plugin, benchmarks and examples (tests write a
# hostile pickle on purpose, below).
SOURCES = sorted(
    p for folder in ("fiftyone_blip", "operators", "benchmarks", "examples") for p in (ROOT / folder).rglob("*.py")
)
PICKLE_MODULES = {"pickle", "cPickle", "_pickle", "dill", "cloudpickle", "joblib", "shelve", "marshal"}


def _calls(tree):
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            yield node, ast.unparse(node.func)


@pytest.mark.parametrize("source", SOURCES, ids=lambda p: str(p.relative_to(ROOT)))
def test_no_pickle_loading_and_no_remote_code(source):
    text = source.read_text()
    tree = ast.parse(text, filename=str(source))
    problems = []
    # plain text too: a setting passed through a dict or a string escapes the call checks below
    for pattern in (
        r"trust_remote_code[\"']?\s*[=:]\s*True",
        r"weights_only[\"']?\s*[=:]\s*False",
        r"\bpickle\.loads?\(",
    ):
        problems += [f"text matches {pattern!r}" for _ in re.finditer(pattern, text)]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import | ast.ImportFrom):
            names = [alias.name for alias in node.names] + [getattr(node, "module", None) or ""]
            if any(name.split(".")[0] in PICKLE_MODULES for name in names):
                problems.append(f"line {node.lineno}: imports a pickle-based loader")
    for call, name in _calls(tree):
        keywords = {k.arg: k.value for k in call.keywords}
        if name in ("torch.load", "load") or name.endswith((".torch.load", "pickle.load", "pickle.loads")):
            problems.append(f"line {call.lineno}: {name}() loads pickles")
        value = keywords.get("allow_pickle")
        if "allow_pickle" in keywords and not (isinstance(value, ast.Constant) and value.value is False):
            problems.append(f"line {call.lineno}: allow_pickle is not False")
        value = keywords.get("trust_remote_code")
        if "trust_remote_code" in keywords and not (isinstance(value, ast.Constant) and value.value is False):
            problems.append(f"line {call.lineno}: trust_remote_code is not False")
        value = keywords.get("use_safetensors")
        if "use_safetensors" in keywords and not (isinstance(value, ast.Constant) and value.value is True):
            problems.append(f"line {call.lineno}: use_safetensors is not True")
        value = keywords.get("weights_only")
        if "weights_only" in keywords and not (isinstance(value, ast.Constant) and value.value is True):
            problems.append(f"line {call.lineno}: weights_only is not True")
    assert not problems, f"{source.relative_to(ROOT)}:\n" + "\n".join(problems)


def test_model_weights_are_loaded_with_safetensors_only():
    tree = ast.parse((ROOT / "fiftyone_blip" / "models.py").read_text())
    weight_loads = [
        (call, {k.arg: k.value for k in call.keywords})
        for call, name in _calls(tree)
        if name.endswith("from_pretrained") and "Processor" not in name
    ]
    assert weight_loads, "models.py loads no weights?"
    for _call, keywords in weight_loads:
        assert isinstance(keywords.get("use_safetensors"), ast.Constant) and keywords["use_safetensors"].value is True
    shipped = {p.suffix for p in (ROOT / "fiftyone_blip").rglob("*") if p.is_file()}
    assert not shipped & {".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt", ".h5", ".msgpack"}


class _Payload:
    """Unpickling this creates the folder `marker`: proof that a pickle ran."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return os.mkdir, (self.marker,)


@pytest.fixture
def hostile_model_dirs(tmp_path, tiny_random_captioner):
    """Model folders a user might be handed: pickle weights, remote code, a non-BLIP config."""
    import json
    import pickle  # only to write the hostile file
    import shutil

    marker = tmp_path / "code-ran"
    dirs = {}
    pickled = tmp_path / "pickle-only"
    shutil.copytree(tiny_random_captioner, pickled)
    (pickled / "model.safetensors").unlink()
    (pickled / "pytorch_model.bin").write_bytes(pickle.dumps(_Payload(marker)))
    dirs["pickle-only"] = pickled

    both = tmp_path / "pickle-beside-safetensors"
    shutil.copytree(tiny_random_captioner, both)
    (both / "pytorch_model.bin").write_bytes(pickle.dumps(_Payload(marker)))
    dirs["pickle-beside-safetensors"] = both

    remote = tmp_path / "remote-code"
    shutil.copytree(tiny_random_captioner, remote)
    (remote / "evil.py").write_text(f"import os\nos.mkdir({str(marker)!r})\n")
    for name in ("config.json", "processor_config.json", "tokenizer_config.json"):
        path = remote / name
        if path.exists():
            config = json.loads(path.read_text())
            config["auto_map"] = {
                "AutoConfig": "evil.Config",
                "AutoModel": "evil.Model",
                "AutoProcessor": "evil.Processor",
                "AutoTokenizer": ["evil.Tokenizer", None],
            }
            path.write_text(json.dumps(config))
    dirs["remote-code"] = remote

    other = tmp_path / "not-blip"
    shutil.copytree(tiny_random_captioner, other)
    config = json.loads((other / "config.json").read_text())
    config["model_type"] = "clip"
    (other / "config.json").write_text(json.dumps(config))
    dirs["not-blip"] = other
    return dirs, marker


def test_hostile_model_folders_run_no_code(hostile_model_dirs, untouched):
    from click.testing import CliRunner

    from fiftyone_blip import models
    from fiftyone_blip.cli import main

    dirs, marker = hostile_model_dirs
    with pytest.raises(models.ModelLoadError, match="no .safetensors weights"):
        models.load_model(str(dirs["pickle-only"]), device="cpu")
    with pytest.raises(models.ModelLoadError, match="not a BLIP model"):
        models.load_model(str(dirs["not-blip"]), device="cpu")
    # safetensors weights beside a pickle, and auto_map entries pointing at code in the folder:
    # the safetensors weights load, the pickle and the code are ignored
    for name in ("pickle-beside-safetensors", "remote-code"):
        loaded = models.load_model(str(dirs[name]), device="cpu")
        assert type(loaded.model).__name__ == "BlipForConditionalGeneration"

    runner = CliRunner()
    for name, message in (("pickle-only", "no .safetensors weights"), ("not-blip", "not a BLIP model")):
        result = runner.invoke(main, ["caption", untouched.name, "-m", str(dirs[name]), "-q"])
        assert result.exit_code == 1 and result.output.startswith("Error: ") and message in result.output
        assert result.output.count("\n") == 1, result.output
    assert not marker.exists(), "a pickle or a module from a model folder ran"
    assert "caption" not in untouched.get_field_schema()


@pytest.fixture
def no_model_loading(monkeypatch):
    """Makes loading a model fail the test: bounds must be checked before any work."""
    from fiftyone_blip import models

    def refuse(*args, **kwargs):
        raise AssertionError("a model was loaded before the settings were checked")

    monkeypatch.setattr(models, "load_model", refuse)


@pytest.fixture(scope="module")
def untouched(fo):
    """A small dataset that the bounds tests must leave as it is."""
    import fiftyone_blip

    base = fiftyone_blip.load_shapes_dataset("tests-shapes", count=48, split="test")
    name = "reliability-untouched"
    if fo.dataset_exists(name):
        fo.delete_dataset(name)
    dataset = base.limit(3).clone(name)
    yield dataset
    fo.delete_dataset(name)


def _assert_untouched(dataset, schema_before) -> None:
    import fiftyone_blip

    dataset.reload()
    assert set(dataset.get_field_schema()) == schema_before
    assert fiftyone_blip.runs(dataset) == []


@pytest.mark.parametrize("capability, bad", BOUNDS, ids=[f"{c.name}-{b.label}" for c, b in BOUNDS])
def test_bounds_are_checked_before_any_work(capability, bad, untouched, no_model_loading, plugin_installed):
    import fiftyone.operators as foo
    from click.testing import CliRunner
    from fiftyone.operators.executor import ExecutionContext

    from fiftyone_blip.cli import main

    schema = set(untouched.get_field_schema())

    # SDK
    with pytest.raises(ValueError, match=bad.message):
        capability.sdk(untouched, **bad.params)
    _assert_untouched(untouched, schema)

    # CLI: one line, exit code 1
    result = CliRunner().invoke(main, [*capability.cli(untouched.name), *bad.cli])
    assert result.exit_code == 1 and result.output.startswith("Error: ") and bad.message in result.output
    assert result.output.count("\n") == 1, result.output
    _assert_untouched(untouched, schema)

    # App operator: the form is marked invalid, and executing anyway is refused
    uri, params = capability.operator
    params = {**params, **bad.params}
    operator = foo.get_operator(uri)
    form = operator.resolve_input(ExecutionContext(request_params=dict(dataset_name=untouched.name, params=params)))
    from app_forms import form_inputs

    invalid = {name: p for name, p in form_inputs(form).items() if getattr(p, "invalid", False)}
    # the form names the input by its label ("Beams must be from 1 to 10"): the error must sit at
    # the input given the bad value, or carry the library's words
    assert invalid and any(name in bad.params or bad.message in p.error_message for name, p in invalid.items())
    with pytest.raises(Exception) as raised:
        foo.execute_operator(uri, ctx=dict(dataset=untouched, params=params)).raise_exceptions()
    # the library's words, or FiftyOne's validation of the input the form marked invalid
    text = str(raised.value)
    assert (bad.operator_message or bad.message) in text or any(f"Path: {n}." in text for n in bad.params), text
    _assert_untouched(untouched, schema)


def _cli_error(args: list[str], message: str) -> None:
    """The CLI refuses `args` with one line naming `message`, exit code 1."""
    from click.testing import CliRunner

    from fiftyone_blip.cli import main

    result = CliRunner().invoke(main, args)
    assert result.exit_code == 1 and result.output.startswith("Error: ") and message in result.output, result.output
    assert result.output.count("\n") == 1, result.output


# `untouched` holds 3 samples and no index: the missing index is named first, whatever `k`
# (test_embeddings checks `k` against an index)
NO_INDEX = "has no similarity index 'blip_sim' (indexes: none)"
SEARCH_BOUNDS = [  # (label, query, k, message)
    ("k-0", "a red circle", 0, NO_INDEX),
    ("k-negative", "a red circle", -3, NO_INDEX),
    ("k-over-dataset-size", "a red circle", 4, NO_INDEX),
    ("empty-query", "", 1, "`query` must be a non-empty text"),
    ("blank-query", "  ", 1, "`query` must be a non-empty text"),
]


@pytest.mark.parametrize("query, k, message", [b[1:] for b in SEARCH_BOUNDS], ids=[b[0] for b in SEARCH_BOUNDS])
def test_search_bounds_are_checked_before_any_work(query, k, message, untouched, no_model_loading):
    """k in 1..len(samples) and a non-empty query, in the SDK and the CLI, before any model or index.

    Search has no operator of its own: the App searches the index `embed` builds with FiftyOne's
    own similarity search.
    """
    import fiftyone_blip

    schema = set(untouched.get_field_schema())
    with pytest.raises(ValueError, match=re.escape(message)):
        fiftyone_blip.search(untouched, query, k=k)
    _cli_error(["search", untouched.name, query, "-k", str(k)], message)
    _assert_untouched(untouched, schema)
    assert untouched.list_brain_runs() == []


def test_heatmap_layer_out_of_the_models_range_is_refused_before_any_sample(untouched, plugin_installed):
    """A layer index the model does not have: found when the model is known, before any sample is touched."""
    import fiftyone.operators as foo

    capability = BY_NAME["heatmaps"]
    schema = set(untouched.get_field_schema())
    with pytest.raises(ValueError, match="`layers` index 99 is out of range"):
        capability.sdk(untouched, layers="99")
    _cli_error([*capability.cli(untouched.name), "--layers", "99"], "out of range")
    uri, params = capability.operator
    with pytest.raises(Exception, match="out of range"):
        foo.execute_operator(uri, ctx=dict(dataset=untouched, params={**params, "layers": "99"})).raise_exceptions()
    _assert_untouched(untouched, schema)


# --- adapters: names and folders ------------------------------------------------------------------

ESCAPING_NAMES = ["../x", "/etc", "de/../../x", "", "..", "de/x", "./de", "~"]


class _FileAudit:
    """Paths this process opens, lists or creates while active (a `sys.addaudithook` hook).

    The hook cannot be removed; it stays installed, inactive, for the rest of the session.
    """

    _installed = None

    def __init__(self):
        self.active = False
        self.paths: list[str] = []

    def hook(self, event, args):
        if self.active and event in ("open", "os.listdir", "os.scandir", "os.mkdir", "os.rename", "os.symlink"):
            if args and isinstance(args[0], str | bytes | os.PathLike):
                self.paths.append(os.fsdecode(args[0]))

    @classmethod
    def get(cls) -> _FileAudit:
        if cls._installed is None:
            cls._installed = cls()
            sys.addaudithook(cls._installed.hook)
        return cls._installed


@pytest.fixture
def adapter_home(tmp_path, monkeypatch):
    """A registry folder, and valid adapters and pickles *outside* it, where escaping names would lead.

    home/registry/       the registry (FIFTYONE_BLIP_ADAPTERS_DIR)
    home/registry/xy ->  a symlink to home/outside/xy
    home/x, x            full adapters (of shapes-tiny), each with a pickle beside its safetensors
    """
    import json
    import pickle  # only to write the hostile files
    import shutil

    from fiftyone_blip import adapters

    home = tmp_path / "home"
    registry = home / "registry"
    registry.mkdir(parents=True)
    marker = tmp_path / "pickle-ran"

    def decoy(target: Path, language: str) -> Path:
        shutil.copytree(adapters.BUNDLED_ADAPTERS_DIR / "de", target)
        manifest = json.loads((target / adapters.MANIFEST_FILE).read_text())
        manifest["language"] = language
        (target / adapters.MANIFEST_FILE).write_text(json.dumps(manifest))
        (target / "adapter_model.bin").write_bytes(pickle.dumps(_Payload(marker)))
        return target

    outside = [decoy(home / "x", "x"), decoy(tmp_path / "x", "x"), decoy(home / "outside" / "xy", "xy")]
    (registry / "xy").symlink_to(home / "outside" / "xy", target_is_directory=True)
    monkeypatch.setenv(adapters.REGISTRY_ENV, str(registry))
    return registry, outside, marker


def _tree(folder: Path) -> set[str]:
    return {str(p) for p in folder.rglob("*")}


@pytest.mark.parametrize("name", ESCAPING_NAMES)
def test_adapter_names_cannot_escape_the_registry(name, adapter_home, untouched, no_model_loading):
    """Caption (SDK, CLI) and training refuse a language that is not a plain code: nothing read or written."""
    import fiftyone_blip

    registry, outside, marker = adapter_home
    home = registry.parent
    before = _tree(home.parent)
    audit = _FileAudit.get()
    audit.paths.clear()
    audit.active = True
    try:
        os.listdir(registry)  # the audit sees this one: it is watching
        with pytest.raises(ValueError, match="language code"):
            fiftyone_blip.caption(untouched, model="shapes-tiny", language=name, progress=False)
        with pytest.raises(ValueError, match="language code"):
            fiftyone_blip.train_adapter(name, samples=untouched, caption_field="gt_caption", model="shapes-tiny")
    finally:
        audit.active = False
    _cli_error(["caption", untouched.name, "-m", "shapes-tiny", "--language", name, "-q"], "language code")
    _cli_error(["adapters", "train", "-l", name, "-d", untouched.name, "-c", "gt_caption"], "language code")
    assert audit.paths[0] == str(registry)
    touched = [p for p in audit.paths[1:] if p.startswith(str(home.parent))]
    assert not touched, f"files read near the registry: {touched}"
    assert _tree(home.parent) == before  # nothing written
    assert not marker.exists()


def test_adapter_links_out_of_the_registry_and_pickle_weights_are_refused(adapter_home, untouched):
    """A symlink out of the registry is neither listed nor loaded; an adapter with only a pickle is refused.

    The pickle would create `marker` if it were ever unpickled.
    """
    import pickle  # only to write the hostile file
    import shutil

    import fiftyone_blip
    from fiftyone_blip import adapters

    registry, outside, marker = adapter_home
    assert "xy" not in {m["language"] for m in fiftyone_blip.list_adapters()}
    assert "xy" not in fiftyone_blip.adapter_languages("shapes-tiny")
    with pytest.raises(adapters.AdapterError, match="outside"):
        fiftyone_blip.caption(untouched, model="shapes-tiny", device="cpu", language="xy", progress=False)

    # a registry adapter whose weights are only a pickle (adapter_model.bin): refused, never unpickled
    pickled = registry / "xx"
    shutil.copytree(outside[0], pickled)
    (pickled / adapters.WEIGHTS_FILE).unlink()
    (pickled / "adapter_model.bin").write_bytes(pickle.dumps(_Payload(marker)))
    manifest = (pickled / adapters.MANIFEST_FILE).read_text().replace('"language": "x"', '"language": "xx"')
    (pickled / adapters.MANIFEST_FILE).write_text(manifest)
    with pytest.raises(adapters.AdapterError, match="safetensors only"):
        fiftyone_blip.caption(untouched, model="shapes-tiny", device="cpu", language="xx", progress=False)
    _cli_error(
        ["caption", untouched.name, "-m", "shapes-tiny", "--device", "cpu", "-l", "xx", "-q"], "safetensors only"
    )
    assert not marker.exists(), "a pickle from an adapter folder ran"
    assert "caption" not in untouched.get_field_schema()


# --- heatmaps: files only under their folder -------------------------------------------------------

HOSTILE_TEXT = "../../evil /etc/passwd ..\\x ~/y a red square"
HOSTILE_WORDS = ["../../evil", "/etc/passwd", "..", "~", "a/../../b", "..\\x", "C:\\w", "\x00nul"]


def test_heatmap_files_stay_under_their_folder(fo, corpus_base, tmp_path, one_torch_thread):
    """maps_dir and overlay files land only under the folder given, whatever the words, text or field."""
    import fiftyone_blip

    base = tmp_path / "work"
    maps, overlays = base / "maps", base / "overlays"
    base.mkdir()
    name = "reliability-heatmap-paths"
    if fo.dataset_exists(name):
        fo.delete_dataset(name)
    dataset = corpus_base.select_by("case", ["plain-jpeg", "spaces-non-ascii-path"]).clone(name)
    try:
        dataset.set_values("gt_caption", [HOSTILE_TEXT] * len(dataset))
        outside = _tree(tmp_path.parent) - _tree(base)
        summary = fiftyone_blip.heatmaps(
            dataset, model="shapes-tiny", device="cpu", text_field="gt_caption", maps_dir=str(maps), progress=False
        )
        assert (summary.done, summary.failed) == (len(dataset), 0)
        fiftyone_blip.heatmaps(
            dataset,
            model="shapes-tiny",
            device="cpu",
            text=HOSTILE_TEXT,
            field="hm_text",
            maps_dir=str(maps),
            progress=False,
        )
        written = [Path(p) for paths in dataset.values("heatmap_word_maps.map_path") for p in paths]
        written += [Path(h.map_path) for h in dataset.values("heatmap")]
        assert written and all(p.resolve().is_relative_to(maps.resolve()) and p.is_file() for p in written)

        # overlays: words as stored in a sample (here hostile ones) become file names under the folder
        sample = dataset.first()
        words = HOSTILE_WORDS[: len(sample["heatmap_words"])]
        sample["heatmap_words"] = words + sample["heatmap_words"][len(words) :]
        sample.save()
        paths = fiftyone_blip.write_heatmap_overlays(sample, str(overlays))
        assert len(paths) == len(sample["heatmap_words"]) + 1
        assert all(Path(p).resolve().parent == overlays.resolve() and Path(p).is_file() for p in paths)
        _cli_error(["heatmaps", dataset.name, "-m", "shapes-tiny", "-f", "../../evil", "-q"], "`field` must be")
        assert (_tree(tmp_path.parent) - _tree(base)) == outside, "a file was written outside the folders given"
        assert set(os.listdir(base)) == {"maps", "overlays"}
    finally:
        fo.delete_dataset(name)


if __name__ == "__main__" and sys.argv[1:] == ["zygote"]:
    _zygote_main()
