"""The device benchmark runs without FiftyOne or MongoDB (as on the GPU machine) and writes its JSON."""

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# What the GPU machine lacks, made unimportable: an import of any of them raises ImportError.
BLOCKED = ("fiftyone", "pymongo", "bson", "eta", "motor", "mongoengine")
RUNNER = (
    "import runpy, sys\n"
    f"for name in {BLOCKED!r}:\n"
    "    sys.modules[name] = None\n"
    "sys.argv = sys.argv[1:]\n"
    "runpy.run_path(sys.argv[0], run_name='__main__')\n"
)


def test_bench_gpu_smoke_runs_without_fiftyone_and_writes_its_json(tmp_path):
    out = tmp_path / "out"
    command = [
        sys.executable,
        "-c",
        RUNNER,
        str(ROOT / "benchmarks" / "bench_gpu.py"),
        "--device",
        "cpu",
        "--smoke",
        "--out",
        str(out),
        "--workdir",
        str(tmp_path / "work"),
        "--budget",
        "900",  # a shared test machine may be slow; nothing may be skipped here
    ]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
    done = subprocess.run(command, capture_output=True, text=True, timeout=900, env=env, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads((out / "bench_gpu.json").read_text())

    assert result["device"] == "cpu" and result["smoke"] is True
    assert result["fiftyone_imported"] is False and result["pymongo_imported"] is False
    assert result["errors"] == {} and result["skipped_for_time"] == []
    steps = result["steps"]["float32"]
    expected = {
        "caption_greedy",
        "caption_beam3",
        "itc_embeddings",
        "itm_scores",
        "heatmaps",
        "language_adapter_greedy",
    }
    assert set(steps) == expected
    for row in steps.values():
        assert row["images_per_s"] > 0 and row["batches"] >= 2
    assert [row["batch_size"] for row in result["batch_sweep"]["rows"]] == [2, 4]
    pipeline = result["image_pipeline"]
    assert pipeline["threads_1"]["images_per_s"] > 0
    assert result["transfer"]["max_abs_difference"] < 1e-5
    assert result["files_to_results"]["results"] == result["files_to_results"]["images"] > 0
    assert "CUDA only" in result["decoding_levers"]
    agreement = result["agreement"]["float32"]
    # on the CPU the check compares the CPU with itself, and says so
    assert agreement["trivial"] is True and agreement["compared"] == "cpu float32 vs cpu float32"
    assert agreement["caption_agreement_en"] == agreement["caption_agreement_de_adapter"] == 1.0
    assert agreement["embedding_cosine_min"] > 0.9999 and agreement["passed"] is True
