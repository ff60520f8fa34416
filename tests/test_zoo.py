"""BLIP as FiftyOne zoo models: the source FiftyOne reads, batching, zero-shot classes, ITM,
captions, and a similarity index whose prompt model reloads in any process."""

import hashlib
import http.server
import json
import logging
import os
import re
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
from repo_archive import serve, tracked_files_archive

import fiftyone_blip
from fiftyone_blip import zoo
from fiftyone_blip.shapes.data import KINDS


@pytest.fixture(scope="module")
def base(fo):
    dataset = fiftyone_blip.load_shapes_dataset("t-zoo-base", count=48, split="test", overwrite=True)
    yield dataset
    fo.delete_dataset("t-zoo-base")


@pytest.fixture
def clone(base, fo, request):
    name = "t-zoo-" + request.node.name[:40]
    if fo.dataset_exists(name):
        fo.delete_dataset(name)
    dataset = base.clone(name)
    yield dataset
    fo.delete_dataset(name)


@pytest.fixture
def zoo_dir(fo, tmp_path, monkeypatch):
    """An empty model_zoo_dir for one test."""
    folder = tmp_path / "models"
    monkeypatch.setattr(fo.config, "model_zoo_dir", str(folder))
    return folder


def test_the_source_is_one_fiftyone_registers_and_lists(zoo_dir):
    import fiftyone.zoo as foz

    assert foz.list_zoo_model_sources() == []
    folder = zoo.register_source()
    assert folder == zoo_dir / "fiftyone-blip"
    assert foz.list_zoo_model_sources() == [zoo.source_url()]
    listed = set(foz.list_zoo_models(source=zoo.source_url()))
    assert listed == set(zoo.model_entries())
    assert {"blip-itc-shapes-tiny", "blip-itm-shapes-tiny", "blip-captioning-base", "blip-itc-base-coco"} <= listed
    for name in listed:
        model = foz.get_zoo_model(name)
        assert model.license and model.description and model.requirements.packages
    zoo.register_source()  # idempotent
    assert sorted(p.name for p in folder.iterdir()) == ["__init__.py", "manifest.json"]


def test_register_source_writes_only_over_its_own_folder(zoo_dir):
    (zoo_dir / "fiftyone-blip").mkdir(parents=True)
    (zoo_dir / "fiftyone-blip" / "manifest.json").write_text(json.dumps({"name": "someone-else", "models": []}))
    with pytest.raises(ValueError, match="is not a fiftyone-blip model source"):
        zoo.register_source()
    assert json.loads((zoo_dir / "fiftyone-blip" / "manifest.json").read_text())["name"] == "someone-else"


def test_settings_are_checked_with_one_line_errors(zoo_dir):
    import fiftyone.zoo as foz

    zoo.register_source()
    with pytest.raises(ValueError, match=r"unknown setting\(s\) \['clases'\]"):
        foz.load_zoo_model("blip-itc-shapes-tiny", clases=["circle"])
    with pytest.raises(ValueError, match="`classes` must be a non-empty list"):
        foz.load_zoo_model("blip-itc-shapes-tiny", classes="circle")
    with pytest.raises(ValueError, match="`strategy` must be one of"):
        foz.load_zoo_model("blip-captioning-shapes-tiny", strategy="best")
    with pytest.raises(ValueError, match="`model_name` must be one of"):
        zoo.load_model("blip-itc-tiny")


def test_compute_embeddings_runs_in_batches_with_the_library_numbers(clone, zoo_dir, caplog):
    import fiftyone.zoo as foz

    zoo.register_source()
    model = foz.load_zoo_model("blip-itc-shapes-tiny")
    sizes = []
    original = model.embedder.embed_images

    def spy(pixels):
        sizes.append(len(pixels))
        return original(pixels)

    model.embedder.embed_images = spy
    with caplog.at_level(logging.WARNING):
        clone.compute_embeddings(model, embeddings_field="zoo_embedding", batch_size=16, progress=False)
    assert "Ignoring batch_size" not in caplog.text
    assert sizes == [16, 16, 16]

    fiftyone_blip.embed(clone, model="shapes-tiny", field="lib_embedding", brain_key=None, progress=False)
    zoo_vectors = np.stack(clone.values("zoo_embedding"))
    lib_vectors = np.stack(clone.values("lib_embedding"))
    assert zoo_vectors.shape == (48, 256)
    assert np.abs(zoo_vectors - lib_vectors).max() < 1e-5  # one model step for both

    prompts = model.embed_prompts(["a red circle", "a blue square"])
    assert prompts.shape == (2, 256) and np.allclose(np.linalg.norm(prompts, axis=1), 1.0, atol=1e-5)
    assert model.can_embed_prompts and np.allclose(model.embed_prompt("a red circle"), prompts[0])


def _accuracy(dataset, field):
    predicted, truth = dataset.values(f"{field}.label"), dataset.values("gt_label.label")
    return float(np.mean([p == t for p, t in zip(predicted, truth)]))


def test_zero_shot_classification_with_classes(clone, zoo_dir):
    import fiftyone as fo
    import fiftyone.zoo as foz

    zoo.register_source()
    model = foz.load_zoo_model("blip-itc-shapes-tiny", classes=list(KINDS))
    clone.apply_model(model, "zero_shot", batch_size=16, store_logits=True, progress=False)
    labels = clone.values("zero_shot")
    assert all(isinstance(label, fo.Classification) for label in labels)
    assert all(label.label in KINDS and 0 < label.confidence <= 1 for label in labels)
    assert all(np.asarray(label.logits).shape == (len(KINDS),) for label in labels)
    accuracy = _accuracy(clone, "zero_shot")
    print(f"zero-shot ITC accuracy on 48 held-out shapes images ({len(KINDS)} kinds): {accuracy:.3f}")
    assert accuracy >= 0.6  # chance is 0.2; the label is the largest of up to three shapes

    # apply_model(classes=...) gives a model loaded without classes its candidates, for that call
    plain = foz.load_zoo_model("blip-itc-shapes-tiny")
    clone.apply_model(plain, "zero_shot_call", classes=list(KINDS), batch_size=16, progress=False)
    assert clone.values("zero_shot_call.label") == clone.values("zero_shot.label")
    assert plain.config.filter_classes is None  # the call's classes do not stick
    with pytest.raises(ValueError, match="zero-shot classification needs `classes`"):
        clone.limit(2).apply_model(plain, "nothing", skip_failures=False, progress=False)


def test_itm_scores_a_text_field_and_classifies(clone, zoo_dir):
    import fiftyone as fo
    import fiftyone.zoo as foz

    zoo.register_source()
    itm = foz.load_zoo_model("blip-itm-shapes-tiny")
    clone.apply_model(itm, "caption_itm", text_field="gt_caption", batch_size=16, progress=False)
    true_scores = np.array(clone.values("caption_itm.value"))
    captions = clone.values("gt_caption")
    clone.set_values("shifted_caption", captions[1:] + captions[:1])  # each image with another's caption
    clone.apply_model(itm, "shifted_itm", text_field="shifted_caption", batch_size=16, progress=False)
    shifted_scores = np.array(clone.values("shifted_itm.value"))
    assert isinstance(clone.first()["caption_itm"], fo.Regression)
    assert ((0 <= true_scores) & (true_scores <= 1)).all()
    assert np.mean(true_scores > shifted_scores) >= 0.9
    configured = foz.load_zoo_model("blip-itm-shapes-tiny", text_field="gt_caption")
    clone.apply_model(configured, "configured_itm", batch_size=16, progress=False)
    assert np.allclose(clone.values("configured_itm.value"), true_scores, atol=1e-6)

    classifier = foz.load_zoo_model("blip-itm-shapes-tiny", classes=list(KINDS))
    clone.apply_model(classifier, "itm_zero_shot", batch_size=16, progress=False)
    accuracy = _accuracy(clone, "itm_zero_shot")
    print(f"zero-shot ITM accuracy on 48 held-out shapes images ({len(KINDS)} kinds): {accuracy:.3f}")
    assert accuracy >= 0.6


def test_captioning_model_matches_the_library(clone, zoo_dir):
    import fiftyone as fo
    import fiftyone.zoo as foz

    zoo.register_source()
    view = clone.limit(16)
    captioner = foz.load_zoo_model("blip-captioning-shapes-tiny", max_new_tokens=20)
    view.apply_model(captioner, "zoo_caption", batch_size=8, progress=False)
    fiftyone_blip.caption(view, model="shapes-tiny", field="lib_caption", max_new_tokens=20, progress=False)
    labels = view.values("zoo_caption")
    assert all(isinstance(label, fo.Classification) and 0 < label.confidence <= 1 for label in labels)
    assert [label.label for label in labels] == view.values("lib_caption")
    assert np.allclose([label.confidence for label in labels], view.values("lib_caption_confidence"), atol=1e-5)


@pytest.fixture
def with_corrupt_file(base, fo, tmp_path, request):
    """Seven shapes images; the third sample's file is not an image."""
    name = "t-zoo-bad-" + request.node.name[:36]
    if fo.dataset_exists(name):
        fo.delete_dataset(name)
    dataset = base.limit(7).clone(name)
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"this is not a PNG file")
    sample = dataset.skip(2).first()
    sample.filepath = str(broken)
    sample.save()
    yield dataset, sample.id
    fo.delete_dataset(name)


def test_a_corrupt_file_costs_its_own_sample_in_a_batch(with_corrupt_file, zoo_dir, caplog):
    import fiftyone as fo
    import fiftyone.core.models as fom
    import fiftyone.zoo as foz

    dataset, bad_id = with_corrupt_file
    loops = {name: getattr(fom, name) for name in zoo._FileLoops.SIGNATURES}
    zoo.register_source()
    model = foz.load_zoo_model("blip-itc-shapes-tiny", classes=list(KINDS))
    with caplog.at_level(logging.WARNING):
        vectors = dataset.compute_embeddings(model, batch_size=4, progress=False)
    assert [v is None for v in vectors] == [False, False, True, False, False, False, False]
    assert bad_id in caplog.text and "not an image" in caplog.text  # the sample and its reason

    fiftyone_blip.embed(dataset, model="shapes-tiny", field="lib_embedding", brain_key=None, progress=False)
    library = dataset.values("lib_embedding")
    assert library[2] is None
    for zoo_vector, lib_vector in zip(vectors, library):
        if lib_vector is not None:
            assert np.abs(zoo_vector - lib_vector).max() < 1e-5

    dataset.compute_embeddings(model, embeddings_field="zoo_embedding", batch_size=4, progress=False)
    assert [v is None for v in dataset.values("zoo_embedding")] == [v is None for v in vectors]

    caplog.clear()
    with caplog.at_level(logging.WARNING):
        dataset.apply_model(model, "zero_shot", batch_size=4, progress=False)
    labels = dataset.values("zero_shot")
    assert [label is None for label in labels] == [False, False, True, False, False, False, False]
    assert all(isinstance(label, fo.Classification) for label in labels if label is not None)
    assert bad_id in caplog.text and "not an image" in caplog.text

    with pytest.raises(Exception, match="not an image"):
        dataset.apply_model(model, "strict", batch_size=4, skip_failures=False, progress=False)
    assert {name: getattr(fom, name) for name in loops} == loops  # FiftyOne's own loops again once it is done


def test_fiftyone_loops_of_another_shape_are_left_alone(with_corrupt_file, zoo_dir, caplog, monkeypatch):
    """If FiftyOne's image loops change their signatures, the model does not take them over: one
    warning, FiftyOne decodes (a bad file then fails its batch, as FiftyOne's own models do)."""
    import fiftyone.core.models as fom
    import fiftyone.zoo as foz

    dataset, _ = with_corrupt_file
    changed = dict(zoo._FileLoops.SIGNATURES, _apply_image_model_batch=("samples", "model", "options"))
    monkeypatch.setattr(zoo._FileLoops, "SIGNATURES", changed)
    monkeypatch.setattr(zoo._FILE_LOOPS, "_warned", False)
    original = fom._apply_image_model_batch
    zoo.register_source()
    model = foz.load_zoo_model("blip-itc-shapes-tiny", classes=list(KINDS))
    with caplog.at_level(logging.WARNING):
        dataset.apply_model(model, "zero_shot", batch_size=4, progress=False)
    assert fom._apply_image_model_batch is original
    assert "FiftyOne's image loops changed" in caplog.text
    assert [label is None for label in dataset.values("zero_shot")] == [True] * 4 + [False] * 3


def test_zoo_models_decode_files_in_their_own_threads(with_corrupt_file, zoo_dir):
    import fiftyone.zoo as foz

    dataset, _ = with_corrupt_file
    zoo.register_source()
    for workers, expected in ((2, {"blip-decode"}), (0, {threading.current_thread().name})):
        model = foz.load_zoo_model("blip-captioning-shapes-tiny", num_workers=workers, max_new_tokens=8)
        threads = set()
        original = model.preprocessor.pixels

        def spy(path, original=original, threads=threads):
            threads.add(threading.current_thread().name.split("_")[0])
            return original(path)

        model.preprocessor.pixels = spy
        dataset.apply_model(model, f"caption_{workers}", batch_size=4, progress=False)
        assert threads == expected
        assert len(dataset.exists(f"caption_{workers}")) == 6
    with pytest.raises(ValueError, match="`num_workers` must be"):
        foz.load_zoo_model("blip-itc-shapes-tiny", num_workers=-1)


def test_zoo_models_read_files_as_the_library_does(clone, zoo_dir, tmp_path):
    """An RGBA cut-out: the library composites it over white, FiftyOne's own reader drops alpha."""
    import fiftyone.zoo as foz
    from PIL import Image

    view = clone.limit(3)
    for sample in view:
        rgba = Image.open(sample.filepath).convert("RGBA")
        alpha = Image.new("L", rgba.size, 255)
        alpha.paste(0, (0, 0, rgba.width // 2, rgba.height))
        rgba.putalpha(alpha)
        sample.filepath = str(tmp_path / f"{sample.id}.png")
        rgba.save(sample.filepath)
        sample.save()
    zoo.register_source()
    model = foz.load_zoo_model("blip-itc-shapes-tiny")
    vectors = view.compute_embeddings(model, batch_size=2, progress=False)
    single = view.compute_embeddings(model, progress=False)  # FiftyOne's per-sample loop too
    fiftyone_blip.embed(view, model="shapes-tiny", field="lib_embedding", brain_key=None, progress=False)
    library = np.stack(view.values("lib_embedding"))
    assert np.abs(np.stack(vectors) - library).max() < 1e-5
    assert np.abs(np.stack(single) - library).max() < 1e-5


def test_the_captioner_takes_every_caption_setting_of_the_library(clone, zoo_dir):
    """The zoo captioner's keywords are `CaptionSettings`' fields (not a list of its own): settings
    added there, such as the word constraints, reach the zoo too, with the same results."""
    import dataclasses

    import fiftyone.zoo as foz

    from fiftyone_blip.captions import CaptionSettings

    zoo.register_source()
    keys = set(zoo.BlipCaptionModelConfig.keys()) - set(zoo.BlipModelConfig.keys())
    assert keys == {f.name for f in dataclasses.fields(CaptionSettings)} - {"model", "field", "language"}
    view = clone.limit(8)
    settings = {"ban_words": ("circle",), "stop_strings": (" on",), "max_new_tokens": 12}
    captioner = foz.load_zoo_model("blip-captioning-shapes-tiny", **settings)
    view.apply_model(captioner, "zoo_caption", batch_size=4, progress=False)
    fiftyone_blip.caption(view, model="shapes-tiny", field="lib_caption", progress=False, **settings)
    assert view.values("zoo_caption.label") == view.values("lib_caption")
    assert not any("circle" in caption or " on " in caption for caption in view.values("lib_caption"))
    with pytest.raises(ValueError, match="unknown setting"):
        foz.load_zoo_model("blip-captioning-shapes-tiny", language="de")


def test_an_index_is_queried_by_text_in_a_process_with_another_model_zoo_dir(clone, tmp_path, monkeypatch):
    """The index stores the source URL; a process whose model_zoo_dir lacks the source fetches it
    from there (a local server stands in for GitHub) and reloads the prompt model by name."""
    www = tmp_path / "www"
    tracked_files_archive(www / "fiftyone-blip.zip", prefix="fiftyone-blip-main")
    with serve(www) as base_url:
        url = f"{base_url}/fiftyone-blip.zip"
        monkeypatch.setenv(zoo.SOURCE_URL_ENV, url)
        fiftyone_blip.embed(clone, model="shapes-tiny", brain_key="zoo_sim", progress=False)
        expected = clone.sort_by_similarity("a red circle", k=5, brain_key="zoo_sim").values("id")
        config = clone.get_brain_info("zoo_sim").config
        assert config.model == url and config.model_kwargs["model_name"] == "blip-itc-shapes-tiny"

        other_zoo = tmp_path / "other-models"
        code = f"""
import json
import fiftyone as fo
import fiftyone.zoo as foz
assert not foz.list_zoo_model_sources()
dataset = fo.load_dataset({clone.name!r})
ids = dataset.sort_by_similarity("a red circle", k=5, brain_key="zoo_sim").values("id")
model = dataset.load_brain_results("zoo_sim").get_model()
print(json.dumps({{"ids": ids, "model": type(model).__name__, "sources": foz.list_zoo_model_sources()}}))
"""
        env = {**os.environ, "FIFTYONE_MODEL_ZOO_DIR": str(other_zoo)}
        env.pop(zoo.SOURCE_URL_ENV, None)  # the fresh process knows only what the index stored
        proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["ids"] == expected
    assert out["model"] == "BlipItcModel"
    assert out["sources"] == [url]
    assert (other_zoo / "fiftyone-blip" / "manifest.json").is_file()


# --- a real download, offline: a local server stands in for the Hugging Face hub --------------------------

_COMMIT = "0123456789abcdef0123456789abcdef01234567"


class _Hub(http.server.BaseHTTPRequestHandler):
    """The three routes `huggingface_hub.snapshot_download` reads: a repo's revision, its file tree,
    and each file (HEAD and GET); `repos` maps a repo id to a folder written by `save_pretrained`."""

    repos: dict = {}

    def log_message(self, *args):
        pass

    def _send(self, body: bytes, headers: dict, head: bool = False):
        self.send_response(200)
        for key, value in {**headers, "Content-Length": str(len(body))}.items():
            self.send_header(key, value)
        self.end_headers()
        if not head:
            self.wfile.write(body)

    def _files(self, repo):
        return sorted(p for p in self.repos[repo].iterdir() if p.is_file())

    def _route(self, head: bool):
        path = self.path.split("?")[0]
        if m := re.fullmatch(r"/api/models/(.+?)/revision/[^/]+", path):
            if m.group(1) in self.repos:
                info = {
                    "id": m.group(1),
                    "sha": _COMMIT,
                    "siblings": [{"rfilename": p.name} for p in self._files(m.group(1))],
                }
                return self._send(json.dumps(info).encode(), {"Content-Type": "application/json"}, head)
        if m := re.fullmatch(r"/api/models/(.+?)/tree/[^/]+", path):
            if m.group(1) in self.repos:
                tree = [
                    {
                        "type": "file",
                        "path": p.name,
                        "size": p.stat().st_size,
                        "oid": hashlib.sha1(p.read_bytes()).hexdigest(),
                    }
                    for p in self._files(m.group(1))
                ]
                return self._send(json.dumps(tree).encode(), {"Content-Type": "application/json"}, head)
        if m := re.fullmatch(r"/(.+?)/resolve/[^/]+/(.+)", path):
            file = self.repos[m.group(1)] / m.group(2) if m.group(1) in self.repos else None
            if file is not None and file.is_file():
                data = file.read_bytes()
                etag = f'"{hashlib.sha1(data).hexdigest()}"'
                return self._send(data, {"X-Repo-Commit": _COMMIT, "ETag": etag}, head)
        self.send_response(404)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def do_GET(self):
        self._route(False)

    def do_HEAD(self):
        self._route(True)


def _hub(repos: dict):
    """Serves `repos` as the hub while the block runs; yields its URL."""
    return serve(handler=type("Hub", (_Hub,), {"repos": repos}))


def _python(code: str, env: dict) -> dict:
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_download_fetches_the_weights_into_the_zoo_folder_and_they_load_offline(tmp_path):
    """`fiftyone zoo models download` fetches the checkpoint with huggingface_hub into the model's zoo
    folder; a failed download (a missing repo, a repo of the wrong architecture) leaves "not
    downloaded" and no files; the downloaded model then loads with HF_HUB_OFFLINE=1 and the hub gone."""
    from fiftyone_blip.random_models import build_random_blip

    repo = build_random_blip(tmp_path / "repo-match", task="match", size="small")
    wrong = build_random_blip(tmp_path / "repo-caption", task="caption", size="small")
    models_dir = tmp_path / "models"
    source = zoo.register_source(models_dir=models_dir)
    env = {**os.environ, "FIFTYONE_MODEL_ZOO_DIR": str(models_dir), "HF_HOME": str(tmp_path / "hf")}
    report = """
import json, os
import fiftyone.zoo as foz
names = ["blip-itc-base-coco", "blip-itc-large-coco", "blip-itm-base-coco"]
print(json.dumps({"downloaded": {n: foz.is_zoo_model_downloaded(n) for n in names},
                  "files": sorted(os.listdir(SOURCE)), "error": ERROR}))
""".replace("SOURCE", repr(str(source)))
    with _hub({"Salesforce/blip-itm-base-coco": repo, "Salesforce/blip-itm-large-coco": wrong}) as url:
        online = {**env, "HF_ENDPOINT": url, "HF_HUB_OFFLINE": "0"}
        cli = subprocess.run(
            [str(Path(sys.executable).parent / "fiftyone"), "zoo", "models", "download", "blip-itc-base-coco"],
            env=online, capture_output=True, text=True, timeout=600,
        )  # fmt: skip
        assert cli.returncode == 0, cli.stderr[-3000:]
        failed = _python(
            "import fiftyone.zoo as foz\ntry:\n    foz.load_zoo_model('blip-itc-large-coco')\n    ERROR = None\n"
            "except Exception as error:\n    ERROR = str(error)\n" + report,
            online,
        )
    assert failed["downloaded"] == {
        "blip-itc-base-coco": True,
        "blip-itc-large-coco": False,
        "blip-itm-base-coco": False,
    }
    assert "BlipForImageTextRetrieval" in failed["error"]  # the caption model is not what an ITC model needs
    assert failed["files"] == ["__init__.py", "blip-itc-base-coco", "blip-itc-base-coco.json", "manifest.json"]
    weights = source / "blip-itc-base-coco"
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= {p.name for p in weights.iterdir()}
    marker = json.loads((source / "blip-itc-base-coco.json").read_text())
    assert marker["checkpoint"] == "Salesforce/blip-itm-base-coco" and marker["weights"] == "blip-itc-base-coco"

    offline = {**env, "HF_HUB_OFFLINE": "1", "HF_ENDPOINT": url}  # the server is down
    loaded = _python(
        f"""
import json
import numpy as np
import fiftyone.zoo as foz
from fiftyone_blip import zoo
model = foz.load_zoo_model("blip-itc-base-coco")
direct = zoo.load_model("blip-itc-base-coco", model={str(repo)!r})
a, b = model.embed_prompts(["a red circle"]), direct.embed_prompts(["a red circle"])
ERROR = float(np.abs(a - b).max())
"""
        + report,
        offline,
    )
    assert loaded["error"] == 0.0  # the downloaded weights, with no network
    assert loaded["downloaded"]["blip-itc-base-coco"] is True
    itm = subprocess.run(
        [sys.executable, "-c", "import fiftyone.zoo as foz; foz.load_zoo_model('blip-itm-base-coco')"],
        env=offline, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert itm.returncode != 0  # offline and not in the cache: refused, and still not downloaded
    assert sorted(p.name for p in source.iterdir()) == failed["files"]


def test_download_takes_a_checkpoint_from_the_hugging_face_cache_with_no_network(tmp_path):
    """A checkpoint that the local Hugging Face cache holds (a model loaded before) downloads into the
    zoo folder with HF_HUB_OFFLINE=1: hard links to the cached files; one that is cached only in part
    (a config read before) is not taken as downloaded."""
    from fiftyone_blip.random_models import build_random_blip

    repo = build_random_blip(tmp_path / "repo-match", task="match", size="small")
    models_dir = tmp_path / "models"
    source = zoo.register_source(models_dir=models_dir)
    env = {**os.environ, "FIFTYONE_MODEL_ZOO_DIR": str(models_dir), "HF_HOME": str(tmp_path / "hf")}
    fill = """
import json
from huggingface_hub import hf_hub_download, snapshot_download
snapshot_download("Salesforce/blip-itm-base-coco", allow_patterns=["*.json", "*.safetensors", "*.txt"])
hf_hub_download("Salesforce/blip-itm-large-coco", "config.json")
print(json.dumps({}))
"""
    with _hub({"Salesforce/blip-itm-base-coco": repo, "Salesforce/blip-itm-large-coco": repo}) as url:
        _python(fill, {**env, "HF_ENDPOINT": url, "HF_HUB_OFFLINE": "0"})
    old_marker = {"model": "blip-itm-base-coco", "weights": "resolved by fiftyone_blip.models.load_model"}
    (source / "blip-itm-base-coco.json").write_text(json.dumps(old_marker))
    out = _python(
        """
import json
import fiftyone.zoo as foz
try:
    foz.download_zoo_model("blip-itm-large-coco")
    error = None
except Exception as e:
    error = str(e)
old = foz.is_zoo_model_downloaded("blip-itm-base-coco")  # the marker of fiftyone-blip 0.1.0, no weights
foz.download_zoo_model("blip-itm-base-coco", overwrite=True)
model = foz.load_zoo_model("blip-itm-base-coco")
print(json.dumps({"error": error, "old": old, "large": foz.is_zoo_model_downloaded("blip-itm-large-coco"),
                  "base": foz.is_zoo_model_downloaded("blip-itm-base-coco"), "model": type(model).__name__}))
""",
        {**env, "HF_HUB_OFFLINE": "1"},
    )
    assert out == {"error": out["error"], "old": True, "large": False, "base": True, "model": "BlipItmModel"}
    assert "cannot download 'Salesforce/blip-itm-large-coco'" in out["error"]
    weights = source / "blip-itm-base-coco" / "model.safetensors"
    assert weights.stat().st_nlink == 2  # a hard link to the cached blob, not a second copy
    assert sorted(p.name for p in source.iterdir()) == [
        "__init__.py", "blip-itm-base-coco", "blip-itm-base-coco.json", "manifest.json",
    ]  # fmt: skip
