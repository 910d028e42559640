"""The device a setting names, and the process's CPU memory kept for reuse."""
import os
import platform
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from dice_core.devices import pick_device

PROJECT = Path(__file__).resolve().parents[1]

FAULTS_OF_FIVE_STEPS = """
import resource, sys, torch
from dice_core.devices import reuse_freed_cpu_memory
if sys.argv[1] == "reuse":
    assert reuse_freed_cpu_memory()
def step():                          # a training step's pattern: 64 MiB blocks held, then freed
    held = [torch.ones(2**24) for _ in range(3)]
    return sum(float(t[0]) for t in held)
for _ in range(10):                  # the heap settles within 4-6 steps (fragmentation)
    step()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(5):
    step()
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""

@pytest.mark.parametrize("gpu, expected", [(True, torch.device("cuda")),
                                           (False, torch.device("cpu"))])
def test_auto_is_the_gpu_when_there_is_one_else_the_cpu(monkeypatch, gpu, expected):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: gpu)
    assert pick_device("auto") == expected


@pytest.mark.parametrize("gpu", [True, False])
def test_a_named_device_is_taken_as_given_with_or_without_a_gpu(monkeypatch, gpu):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: gpu)
    assert pick_device("cpu") == torch.device("cpu")
    assert pick_device("cuda:1") == torch.device("cuda", 1)
    assert pick_device("meta") == torch.device("meta")


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt is glibc's")
def test_freed_cpu_memory_is_reused_without_faulting_its_pages_in_again():
    # a clean environment: what earlier tests left in os.environ (an LD_PRELOAD'ed allocator,
    # malloc settings) must not decide the baseline
    env = {"PATH": os.environ["PATH"], "OMP_NUM_THREADS": "1"}
    faults = {mode: int(subprocess.run([sys.executable, "-c", FAULTS_OF_FIVE_STEPS, mode],
                                       cwd=PROJECT, env=env, capture_output=True, text=True,
                                       check=True).stdout)
              for mode in ("default", "reuse")}
    pages = 5 * 3 * 2**26 // 4096
    assert faults["default"] > pages / 2, faults     # glibc maps each block afresh
    assert faults["reuse"] < pages / 100, faults
