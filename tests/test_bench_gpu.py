"""The prepared GPU benchmark's dry run: every code path on the CPU with the tiny presets, on
an import path that needs none of the pipeline's stack (the GPU machine has none of it)."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

from dice_core.models.registry import resolved_config
from dice_core.training.engine import child_process_env
from helpers import dit_size

PROJECT = Path(__file__).resolve().parents[1]
# what the GPU machine lacks, and the benchmark must not need
PIPELINE_STACK = ("mlflow", "ray", "prefect", "dvc", "webdataset", "codecarbon",
                  "dice_core.config", "dice_core.data", "dice_core.tracking", "pipelines")

# The dry run with the pipeline's stack made unimportable, as on the GPU machine (DeepSpeed's
# own optional imports of some of it then fail quietly, as they do there).
DRY_RUN = f"""
import importlib.abc, importlib.util, sys
class Absent(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {PIPELINE_STACK!r} or name.startswith({PIPELINE_STACK!r}):
            raise ModuleNotFoundError(f"No module named {{name!r}} (absent on the GPU machine)")
sys.meta_path.insert(0, Absent())
spec = importlib.util.spec_from_file_location("gpu_bench", {str(PROJECT / 'bench' / 'gpu.py')!r})
bench = sys.modules["gpu_bench"] = importlib.util.module_from_spec(spec)
spec.loader.exec_module(bench)
sys.exit(bench.main(["--dry-run", "--compile-budget", "0", "--output", sys.argv[1]]))
"""


@pytest.mark.slow
def test_the_gpu_benchmark_dry_run_runs_every_path_without_the_pipeline_stack(tmp_path):
    env = child_process_env()   # not the rank and port of an engine in this test process
    env.setdefault("TORCH_EXTENSIONS_DIR", str(PROJECT / ".cache" / "torch_extensions"))
    env["PATH"] = f"{Path(sys.executable).parent}:{env['PATH']}"
    done = subprocess.run([sys.executable, "-c", DRY_RUN, str(tmp_path)], cwd=tmp_path,
                          env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    record = json.loads((tmp_path / "gpu.json").read_text())
    rows, peak = record["rows"], record["matmul_peak_tflops"]
    assert [row["model"] for row in rows] == ["dice-t", "dit-t", "dimr-t"]
    # the dry run's shape: 4x8x8 latents, 10 classes
    assert rows[1]["forward_macs_per_image"] == dit_size(**{
        **resolved_config("dit-t"), "in_channels": 4, "input_size": 8, "num_classes": 10})[1]
    report = (tmp_path / "gpu.md").read_text()
    for row in rows:
        assert row["train_images_per_s"] > 0 and row["samples_per_s_b2"] > 0
        assert row["compiled"] == "skipped: compile budget spent"
        # forward and backward: 3 x 2 FLOPs per multiply-add, against the measured peak
        mfu = 6 * row["forward_macs_per_image"] * row["train_images_per_s"] / (peak * 1e12)
        assert row["mfu"] == pytest.approx(mfu, rel=1e-12)
        assert f"{mfu:.1%}" in report
    assert peak > 0 and record["vae_encode_images_per_s"] > 0


def test_the_gpu_benchmark_refuses_to_run_without_a_gpu_unless_dry(capsys):
    import importlib.util
    if __import__("torch").cuda.is_available():
        pytest.skip("this machine has a GPU")
    spec = importlib.util.spec_from_file_location("gpu_bench", PROJECT / "bench" / "gpu.py")
    bench = sys.modules["gpu_bench"] = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    assert bench.main([]) == 2
    assert "pass --dry-run" in capsys.readouterr().err
