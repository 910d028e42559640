"""The fault-injection soak: a tiny run of `python -m pipelines.train` is SIGKILLed at six
moments drawn from a fixed seed (between optimiser steps, inside a checkpoint save, inside an
evaluation, inside the MLflow send: the fault points of dice_core/faults.py), resumed each time,
and ends bit for bit where an uninterrupted run ends, with each metric once per step in MLflow.
"""
import json
import random
import signal
import subprocess
import time
from pathlib import Path
from typing import NamedTuple

import pytest
import torch
import yaml
from mlflow.tracking import MlflowClient
from safetensors.torch import load_file

from dice_core.config import Params
from dice_core.evaluation.reference import build_reference
from dice_core.training.checkpoint import CheckpointStore
from dice_core.training.periodic import due
from helpers import subprocess_env, train_command, training_params

STEPS, EVERY, LOG_EVERY = 60, 10, 5     # checkpoints and evaluations every EVERY steps
POINTS = ("step", "checkpoint", "evaluation", "mlflow_send")
SEED = 20240


def fault_plan(seed: int) -> list[tuple[str, float]]:
    """Six (fault point, fraction of the rest of the run) pairs: every point, two drawn again;
    the MLflow ones first (a kill after the last step's metrics would leave none to send)."""
    rng = random.Random(seed)
    points = list(POINTS) + rng.choices(POINTS, k=2)
    rng.shuffle(points)
    points.sort(key=lambda point: point != "mlflow_send")
    return [(point, rng.random()) for point in points]


def due_after(step: int, every: int) -> int:
    return sum(due(done, every, STEPS) for done in range(step + 1, STEPS + 1))


def sure_hits(point: str, resumed: int, logged: int) -> int:
    """How often a run resumed at step ``resumed`` surely reaches ``point``: before each step,
    twice in each checkpoint save, once in each evaluation, and at least once for the metrics
    of each logged step after ``logged`` (those up to it are not sent again)."""
    return {"step": STEPS - resumed, "checkpoint": 2 * due_after(resumed, EVERY),
            "evaluation": due_after(resumed, EVERY),
            "mlflow_send": due_after(max(resumed, logged), LOG_EVERY)}[point]


def run_id(run_dir: Path) -> str | None:
    state = run_dir / "tracking" / "run.json"
    return json.loads(state.read_text())["run_id"] if state.is_file() else None


def metric_histories(uri: str, run: str) -> dict[str, list[tuple[int, float]]]:
    """{metric: its (step, value) points in step order} of the MLflow run ``run``."""
    client = MlflowClient(uri)
    return {key: sorted((m.step, m.value) for m in client.get_metric_history(run, key))
            for key in client.get_run(run).data.metrics}


def last_logged_step(uri: str, run_dir: Path) -> int:
    run = run_id(run_dir)
    history = MlflowClient(uri).get_metric_history(run, "train/loss") if run else []
    return max((metric.step for metric in history), default=0)


def state_differences(first, second, path: str = "") -> list[str]:
    """Where two nested states (dicts, lists, tensors, plain values) differ; tensors must be
    equal bit for bit, in the same dtype."""
    if isinstance(first, torch.Tensor):
        same = isinstance(second, torch.Tensor) and first.dtype == second.dtype and \
            torch.equal(first, second)
        return [] if same else [path]
    if isinstance(first, dict) and isinstance(second, dict) and first.keys() == second.keys():
        return [d for key in first for d in state_differences(first[key], second[key],
                                                              f"{path}/{key}")]
    if isinstance(first, (list, tuple)) and type(first) is type(second) and \
            len(first) == len(second):
        return [d for i, (a, b) in enumerate(zip(first, second))
                for d in state_differences(a, b, f"{path}/{i}")]
    return [] if first == second else [path]


def final_state(run_dir: Path) -> dict:
    """The latest checkpoint's engine state (weights, optimiser, counters) and EMA weights."""
    store = CheckpointStore(run_dir)
    latest = store.latest()
    assert latest["step"] == STEPS, latest
    folder = store.folder / latest["tag"]
    return {"engine": torch.load(folder / "mp_rank_00_model_states.pt", weights_only=True),
            "ema": load_file(folder / "ema.safetensors")}


@pytest.fixture
def soak_params(tmp_path, tiny_shards, mlflow_server):
    """params.yaml of the soak's runs (name: folder under tmp_path): dit-t for STEPS steps,
    evaluated against a reference of the training images with 4 samples of 2 sampling steps."""
    raw = training_params(tmp_path, tiny_shards, mlflow_server.uri, steps=STEPS,
                          ckpt_every=EVERY, eval_every=EVERY, log_every=LOG_EVERY)
    raw["evaluate"].update(reference=str(tmp_path / "reference.npz"), samples=4, steps=2,
                           batch_size=4, device="cpu",
                           classifier=str(tmp_path / "no-classifier.safetensors"))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)        # as the runs: one thread each
    try:
        build_reference(Params.model_validate(raw).evaluate, tiny_shards.parent / "prepared",
                        tiny_shards)
    finally:
        torch.set_num_threads(threads)

    def params_file(name: str) -> Path:
        folder = tmp_path / name
        folder.mkdir()
        runs = {**raw, "train": {**raw["train"], "output": str(folder / "runs")}}
        (folder / "params.yaml").write_text(yaml.safe_dump(runs))
        return folder / "params.yaml"
    return params_file


class Run(NamedTuple):
    """A `python -m pipelines.train` started by ``train``."""
    process: subprocess.Popen
    log: Path
    started: float

    def finish(self) -> tuple[int, str]:
        """Its exit status and output, once it has ended."""
        status = self.process.wait(timeout=300)
        output = self.log.read_text()
        print(f"{self.log.name}: exit status {status} after "
              f"{time.monotonic() - self.started:.0f} s: {output.strip()[-80:]!r}")
        return status, output


def train(params_file: Path, name: str, fault: str = "") -> Run:
    """`python -m pipelines.train` on one thread (the reference runs beside the faulted runs),
    with the fault point ``fault`` (point:n) armed; its output goes to ``name``.log beside the
    params."""
    env = subprocess_env(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", DICE_FAULT=fault)
    log = params_file.with_name(f"{name}.log")
    with open(log, "w") as output:
        process = subprocess.Popen(train_command(params_file), cwd=Path(__file__).parents[1],
                                   env=env, stdout=output, stderr=subprocess.STDOUT)
    return Run(process, log, time.monotonic())


@pytest.mark.slow
def test_a_run_killed_at_six_drawn_moments_ends_as_an_uninterrupted_one(soak_params,
                                                                       mlflow_server):
    reference_file, faulted_file = soak_params("reference"), soak_params("faulted")
    reference = train(reference_file, "uninterrupted")     # beside the faulted runs
    run_dir = faulted_file.parent / "runs" / "dit-t"
    try:
        for attempt, (point, fraction) in enumerate(fault_plan(SEED), start=1):
            resumed = (CheckpointStore(run_dir).latest() or {}).get("step", 0)
            hits = sure_hits(point, resumed, last_logged_step(mlflow_server.uri, run_dir))
            assert hits, f"nothing left to kill at {point} after step {resumed}"
            fault = f"{point}:{1 + int(fraction * hits)}"
            status, output = train(faulted_file, f"{attempt}-{fault}-from-step-{resumed}",
                                   fault).finish()
            assert status == -signal.SIGKILL and f"SIGKILL at {point}" in output, output[-3000:]
        for run in (train(faulted_file, "7-resumed"), reference):
            status, output = run.finish()
            assert status == 0, output[-3000:]
    finally:
        reference.process.kill()
    reference_dir = reference_file.parent / "runs" / "dit-t"
    assert state_differences(final_state(run_dir), final_state(reference_dir)) == []

    faulted = metric_histories(mlflow_server.uri, run_id(run_dir))
    expected = metric_histories(mlflow_server.uri, run_id(reference_dir))
    assert {key: [step for step, _ in points] for key, points in faulted.items()} == \
        {key: [step for step, _ in points] for key, points in expected.items()}
    assert all(len({step for step, _ in points}) == len(points) for points in faulted.values())
    for key in [key for key in expected if key == "train/loss" or key.startswith("eval/")]:
        assert faulted[key] == expected[key], key
