"""The data stages as users run them: `dice prepare/encode`, `python -m`, `dvc repro`, and a
stage killed with SIGKILL."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from dice_core.data import read_manifest, read_shard
from dice_core.training.engine import child_process_env
from helpers import scratch_project, with_runs

PROJECT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def write_params(folder, **sections):
    params = yaml.safe_load((PROJECT / "params.yaml").read_text())
    for name, values in sections.items():
        params[name].update(values)
    path = folder / "params.yaml"
    path.write_text(yaml.safe_dump(params))
    return path


def shapes_params(folder, count=8, shard_size=5, **prepare):
    return write_params(folder, prepare={
        "source": "shapes", "resolution": 16, "shard_size": shard_size, "limit_per_class": None,
        "shapes": {"num_classes": 3, "image_size": 16, "count_per_class": {"train": count},
                   "seed": 0},
        "output": str(folder / "prepared"), **prepare},
        encode={"encoder": "pixels", "input": str(folder / "prepared"),
                "output": str(folder / "latents"), "device": "cpu"})


def run(command, cwd=PROJECT, check=True):
    return subprocess.run(command, cwd=cwd, check=check, capture_output=True, text=True,
                          env={**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"})


def test_dice_command_and_python_module_write_the_same_shards(tmp_path):
    outputs = []
    for name, prefix in (("cli", [str(BIN / "dice"), "prepare"]),
                         ("module", [sys.executable, "-m", "pipelines.prepare"])):
        params = shapes_params(tmp_path)
        out = tmp_path / name
        run(prefix + ["--params", str(params), "--output", str(out)])
        outputs.append([r["sha256"] for r in read_manifest(out)["shards"]])
    assert outputs[0] == outputs[1] and len(outputs[0]) == 5
    run([str(BIN / "dice"), "encode", "--params", str(params), "--input", str(tmp_path / "cli")])
    latents = read_manifest(tmp_path / "latents")
    assert latents["encoder"] == "pixels" and latents["splits"]["train"]["count"] == 24


def test_bad_input_ends_the_command_with_a_message_and_status_2(tmp_path):
    params = write_params(tmp_path, prepare={"source": "imagenet",
                                             "root": str(tmp_path / "missing")})
    result = run([str(BIN / "dice"), "prepare", "--params", str(params)], check=False)
    assert result.returncode == 2
    assert "error:" in result.stderr and "prepare.root" in result.stderr
    result = run([str(BIN / "dice"), "encode", "--params", str(params), "--encoder", "vae",
                  "--vae", str(tmp_path / "no-vae"), "--input", str(tmp_path)], check=False)
    assert result.returncode == 2 and "encode.vae" in result.stderr
    result = run([str(BIN / "dice"), "prepare", "--params", str(params), "--workers", "-1"],
                 check=False)
    assert result.returncode == 2 and "--workers" in result.stderr


def test_a_stage_killed_with_sigkill_and_rerun_gives_complete_correct_shards(tmp_path):
    params = shapes_params(tmp_path, count=400, shard_size=3)
    reference = tmp_path / "reference"
    run([sys.executable, "-m", "pipelines.prepare", "--params", str(params),
         "--output", str(reference)])
    out = tmp_path / "prepared"
    process = subprocess.Popen([sys.executable, "-m", "pipelines.prepare", "--params",
                                str(params)], cwd=PROJECT, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while len(list(out.glob("shard-*.tar"))) < 5 and time.monotonic() < deadline:
        time.sleep(0.002)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert not (out / "manifest.json").exists(), "the stage finished before it was killed"
    expected = {r["name"]: r for r in read_manifest(reference)["shards"]}
    finished = sorted(out.glob("shard-*.tar"))
    assert 5 <= len(finished) < len(expected)
    for shard in finished:  # whatever carries a final name is complete and correct
        assert read_shard(shard, expected[shard.name])

    run([sys.executable, "-m", "pipelines.prepare", "--params", str(params)])
    assert read_manifest(out)["shards"] == read_manifest(reference)["shards"]
    assert not list(out.glob("*.partial"))


@pytest.mark.slow
def test_dvc_repro_runs_what_a_parameter_touches_trains_the_matrix_and_a_longer_run_resumes(
        tmp_path):
    params = scratch_project(tmp_path, resolution=8)
    params["train"].update(models=["dit-t"], steps=2, global_batch=4, log_every=1,
                           ckpt_every=2, eval_every=2, loader_workers=0, device="cpu")
    with_runs(params)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    env = child_process_env()   # not the rank and port of an engine in this test process
    env.setdefault("TORCH_EXTENSIONS_DIR", str(PROJECT / ".cache" / "torch_extensions"))

    def repro(stage):
        return subprocess.run(["dvc", "repro", stage], cwd=tmp_path, check=True, text=True,
                              capture_output=True,
                              env={**env, "PATH": f"{BIN}{os.pathsep}{env['PATH']}"}).stdout

    run(["git", "init", "-q"], cwd=tmp_path)
    run(["dvc", "init", "-q"], cwd=tmp_path)
    first = repro("encode")
    assert "Running stage 'prepare'" in first and "Running stage 'encode'" in first
    assert "Running stage 'autoencoder'" in first     # the latents are the autoencoder's
    assert "static" not in first and "Running stage 'train" not in first
    assert read_manifest(tmp_path / "data" / "latents")["splits"]["train"]["count"] == 8
    assert "didn't change" in repro("encode")

    params["encode"]["storage_dtype"] = "float16"
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    second = repro("encode")
    assert "Running stage 'prepare'" not in second and "Running stage 'encode'" in second
    assert read_manifest(tmp_path / "data" / "latents")["storage_dtype"] == "float16"

    trained = repro("train")
    assert "Running stage 'encode'" not in trained and "Running stage 'train@dit-t'" in trained
    summary = json.loads((tmp_path / "runs" / "dit-t" / "summary.json").read_text())
    assert summary["status"] == "FINISHED" and summary["steps"] == 2

    params["train"]["steps"] = 4
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    longer = repro("train")
    assert "Running stage 'prepare'" not in longer and "Running stage 'train@dit-t'" in longer
    hashes = (tmp_path / "runs" / "dit-t" / "input_hashes.rank0.txt").read_text().splitlines()
    assert [line.split()[0] for line in hashes] == ["0", "1", "2", "3"]   # resumed, not redone
