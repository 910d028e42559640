"""Static analysis: the paper presets' numbers, the command line and the DVC stage."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from dice_core.analysis.static import analyze, count_macs, sampling_throughput
from dice_core.models import build_model
from pipelines.cli import main as dice_main

PROJECT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def within(value, target, tolerance):
    return abs(value - target) <= tolerance * target


def test_dice_xl_matches_the_paper():
    report = analyze("dice-xl", measure_throughput=False)
    assert within(report.trainable_params, 178_425_240, 0.002)
    assert report.attention_macs == 0
    assert within(report.macs_without_attention, 47.49e9, 0.01)


def test_dit_xl_2_matches_both_papers_conventions():
    report = analyze("dit-xl-2", measure_throughput=False)
    assert report.trainable_params == 674_834_720
    assert report.total_params == 675_129_632
    assert within(report.macs_without_attention, 114.46e9, 0.005)  # DICE paper (no attention)
    assert within(report.macs, 118.6e9, 0.005)                      # DiT paper (attention)
    assert report.flops == 2 * report.macs


def test_attention_is_counted_on_a_cpu_model_as_on_the_meta_device():
    """CPU attention takes a flash kernel the flop counter does not know (it counted 0)."""
    with torch.device("meta"):
        shapes_only = build_model("dit-t", in_channels=1, input_size=32, num_classes=10)
    on_cpu = count_macs(build_model("dit-t", in_channels=1, input_size=32, num_classes=10))
    assert on_cpu == count_macs(shapes_only) and on_cpu.attention == 52_428_800


def test_sampling_throughput_is_measured_and_labelled():
    throughput = sampling_throughput(build_model("dice-t"), "cpu", torch.float32,
                                     batch_size=2, ddpm_steps=250, timed_steps=2)
    assert throughput.samples_per_s > 0
    assert (throughput.ddpm_steps, throughput.timed_steps, throughput.batch_size) == (250, 2, 2)


def test_dice_static_command_writes_json(tmp_path, capsys):
    output = tmp_path / "static.json"
    assert dice_main(["static", "--models", "dice-t", "dit-t", "dimr-t", "--json", str(output),
                      "--ddpm-steps", "4", "--timed-steps", "2",
                      "--params", str(PROJECT / "params.yaml")]) == 0
    reports = json.loads(output.read_text())
    assert [r["model"] for r in reports] == ["dice-t", "dit-t", "dimr-t"]
    assert all(r["throughput"]["samples_per_s"] > 0 for r in reports)
    assert "dimr-t" in capsys.readouterr().out


def test_dice_static_rejects_an_unknown_model(capsys):
    assert dice_main(["static", "--models", "dice-xxl", "--no-throughput"]) == 2
    assert "valid models are" in capsys.readouterr().err


def test_console_script_and_module_run_the_same_code(tmp_path):
    for command in ([str(BIN / "dice")], [sys.executable, "-m", "pipelines.static"]):
        output = tmp_path / "out.json"
        args = ["static"] if command[0].endswith("dice") else []
        subprocess.run(command + args + ["--models", "dit-t", "--no-throughput",
                                         "--json", str(output)],
                       check=True, cwd=PROJECT, capture_output=True)
        assert json.loads(output.read_text())[0]["model"] == "dit-t"


@pytest.mark.slow
def test_dvc_repro_runs_the_static_stage_and_skips_it_when_unchanged(tmp_path):
    for item in ("dice_core", "pipelines", "dvc.yaml"):
        source = PROJECT / item
        (shutil.copytree if source.is_dir() else shutil.copy)(source, tmp_path / item)
    params = yaml.safe_load((PROJECT / "params.yaml").read_text())
    params["static"].update(models=["dice-t", "dit-t"], ddpm_steps=4, timed_steps=2)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}",
           "DVC_NO_ANALYTICS": "1", "PYTHONPATH": str(tmp_path)}

    def run(*command):
        return subprocess.run(command, cwd=tmp_path, env=env, check=True,
                              capture_output=True, text=True).stdout

    run("git", "init", "-q")
    run("dvc", "init", "-q")
    run("dvc", "repro", "static")
    reports = json.loads((tmp_path / "results" / "static.json").read_text())
    assert [r["model"] for r in reports] == ["dice-t", "dit-t"]
    assert "didn't change" in run("dvc", "repro", "static")
    params["static"]["models"] = ["dit-t"]
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    run("dvc", "repro", "static")
    assert [r["model"] for r in json.loads((tmp_path / "results" / "static.json").read_text())] \
        == ["dit-t"]
