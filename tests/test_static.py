"""Static analysis: the paper presets' numbers, the command line and the DVC stage."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import yaml
from torch import nn

from dice_core.analysis import static
from dice_core.analysis.static import MacCount, analyze, count_macs, sampling_throughput
from dice_core.models import build_model
from dice_core.models.layers import AttentionCore
from dice_core.models.registry import resolved_config
from helpers import dit_size
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


class TinyNet(nn.Module):
    """A 3x3 conv from 4 to 6 channels on an 8x8 map, attention over its 64 pixels (q, k, v of
    2 channels each), a linear from 2 to 3: multiply-adds 64 x 6 x 4 x 9 = 13,824, then
    2 x 64^2 x 2 = 16,384 in attention, then 64 x 2 x 3 = 384."""
    in_channels, input_size, num_classes = 4, 8, 10

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(4, 6, 3, padding=1)
        self.core = AttentionCore(2, 1)
        self.linear = nn.Linear(2, 3)

    def forward(self, x, t, y):
        return self.linear(self.core(self.conv(x).flatten(2).transpose(1, 2)))


def test_multiply_adds_of_a_small_known_network_and_its_attention_share():
    assert count_macs(TinyNet()) == MacCount(total=13_824 + 16_384 + 384, attention=16_384)
    assert count_macs(TinyNet(), batch_size=3).total == 3 * (13_824 + 16_384 + 384)


class ClockedModel(nn.Module):
    """Predicts zero noise; each call takes exactly half a second of ``clock``."""
    in_channels, input_size, num_classes = 4, 8, 10

    def __init__(self, clock):
        super().__init__()
        self.clock = clock

    def forward(self, x, t, y):
        self.clock.seconds += 0.5
        return torch.zeros(x.shape[0], 2 * self.in_channels, *x.shape[2:])


def test_sampling_throughput_scales_the_timed_steps_to_the_ddpm_steps(monkeypatch):
    clock = SimpleNamespace(seconds=0.0)
    monkeypatch.setattr(static, "time", SimpleNamespace(perf_counter=lambda: clock.seconds))
    # 4 timed steps take 2 s, so 250 steps take 125 s: 2 samples in 125 s
    throughput = sampling_throughput(ClockedModel(clock), "cpu", torch.float32, batch_size=2,
                                     ddpm_steps=250, timed_steps=4)
    assert throughput.samples_per_s == pytest.approx(2 / 125)
    assert (throughput.ddpm_steps, throughput.timed_steps, throughput.batch_size) == (250, 4, 2)
    every_step = sampling_throughput(ClockedModel(clock), "cpu", torch.float32, batch_size=3,
                                     ddpm_steps=10)
    assert every_step.samples_per_s == pytest.approx(3 / 5) and every_step.timed_steps == 10


def test_dice_static_command_writes_json(tmp_path, capsys):
    output = tmp_path / "static.json"
    assert dice_main(["static", "--models", "dice-t", "dit-t", "dimr-t", "--json", str(output),
                      "--ddpm-steps", "4", "--timed-steps", "2",
                      "--params", str(PROJECT / "params.yaml")]) == 0
    reports = json.loads(output.read_text())
    assert [r["model"] for r in reports] == ["dice-t", "dit-t", "dimr-t"]
    assert all(r["throughput"]["samples_per_s"] > 0 for r in reports)
    dit = reports[1]
    params, macs, attention = dit_size(**resolved_config("dit-t"))
    assert (dit["trainable_params"], dit["macs"], dit["attention_macs"]) == (params, macs,
                                                                              attention)
    assert dit["flops"] == 2 * macs and dit["macs_without_attention"] == macs - attention
    table = capsys.readouterr().out.splitlines()
    assert ["dit-t", f"{params:,}"] in [line.split()[:2] for line in table]


def test_dice_static_rejects_an_unknown_model(capsys):
    assert dice_main(["static", "--models", "dice-xxl", "--no-throughput"]) == 2
    assert "valid models are" in capsys.readouterr().err


def test_console_script_and_module_run_the_same_code(tmp_path):
    written = []
    for command in ([str(BIN / "dice"), "static"], [sys.executable, "-m", "pipelines.static"]):
        output = tmp_path / f"{len(written)}.json"
        subprocess.run(command + ["--models", "dit-t", "--no-throughput", "--json", str(output)],
                       check=True, cwd=PROJECT, capture_output=True)
        written.append(json.loads(output.read_text()))
    assert written[0] == written[1]
    assert written[0][0]["trainable_params"] == dit_size(**resolved_config("dit-t"))[0]


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
