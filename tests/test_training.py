"""The training engine on CPU: the real DeepSpeed engine, a real MLflow server, tiny presets on
tiny shards made here."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from mlflow.tracking import MlflowClient
from safetensors.torch import load_file

from dice_core.config import Params, TrainingJob, load_params
from dice_core.training import CheckpointMismatch, NonFiniteLoss, train_model
from dice_core.training import steps as steps_module
from dice_core.training.checkpoint import CheckpointStore
from dice_core.training.health import DivergenceGuard
from dice_core.training.runner import train_models
from helpers import subprocess_env, tiny_latents, train_command, training_params

PROJECT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    """96 coloured shapes of 3 classes at 8x8 in pixel space, 8 shards."""
    return tiny_latents(tmp_path_factory.mktemp("train-data"), num_classes=3, per_class=32,
                        image_size=8, resolution=8, shard_size=12)


def make_params(tmp_path, shards, uri, **train) -> TrainingJob:
    return TrainingJob.of(Params.model_validate(training_params(tmp_path, shards, uri, **train)))


def loss_history(uri, run_id) -> dict[int, set[float]]:
    history: dict[int, set[float]] = {}
    for metric in MlflowClient(uri).get_metric_history(run_id, "train/loss"):
        history.setdefault(metric.step, set()).add(metric.value)
    return history


def engine_weights(run_dir: Path) -> dict[str, torch.Tensor]:
    store = CheckpointStore(run_dir)
    folder = store.folder / store.latest()["tag"]
    return torch.load(folder / "mp_rank_00_model_states.pt", weights_only=False)["module"]


def same_tensors(first: dict, second: dict) -> bool:
    return first.keys() == second.keys() and all(torch.equal(first[k], second[k]) for k in first)


@pytest.mark.parametrize("precision,checkpointing", [("fp32", True), ("fp32", False),
                                                     ("bf16", True)])
def test_the_deepspeed_path_trains_and_lowers_the_loss(tmp_path, shards, mlflow_server,
                                                       precision, checkpointing):
    params = make_params(tmp_path, shards, mlflow_server.uri, steps=24, lr=1e-3,
                         log_every=4, ckpt_every=24, precision=precision,
                         activation_checkpointing=checkpointing)
    summary = train_model(params, "dit-t")
    losses = {step: values.pop() for step, values in
              loss_history(mlflow_server.uri, summary["run_id"]).items()}
    assert sorted(losses) == [4, 8, 12, 16, 20, 24]
    assert losses[24] < 0.8 * losses[4], losses
    config = yaml.safe_load((tmp_path / "runs" / "dit-t" / "deepspeed_config.json").read_text())
    assert config["bf16"]["enabled"] == (precision == "bf16") and not config["fp16"]["enabled"]


def test_every_model_sees_byte_identical_inputs_at_every_step(tmp_path, shards, mlflow_server):
    params = make_params(tmp_path, shards, mlflow_server.uri, steps=3, micro_batch=8,
                         ckpt_every=3, models=["dice-t", "dit-t", "dimr-t"])
    train_models(params, params.train.run_specs())
    logs = [(tmp_path / "runs" / name / "input_hashes.rank0.txt").read_text()
            for name in params.train.models]
    assert logs[0] == logs[1] == logs[2]
    lines = logs[0].splitlines()
    assert [line.split()[:2] for line in lines] == [[str(i // 2), str(i)] for i in range(6)]
    assert len({line.split()[2] for line in lines}) == 6   # and every batch is a new one


@pytest.mark.slow
def test_a_run_killed_with_sigkill_resumes_to_the_same_weights_and_loss_curve(
        tmp_path, shards, mlflow_server):
    settings = dict(steps=40, ckpt_every=8)
    reference = train_model(make_params(tmp_path / "reference", shards, mlflow_server.uri,
                                        **settings), "dit-t")

    killed = tmp_path / "killed"
    killed.mkdir()
    params_file = killed / "params.yaml"
    params_file.write_text(yaml.safe_dump(training_params(killed, shards, mlflow_server.uri,
                                                     **settings)))
    command = train_command(params_file)
    env = subprocess_env()      # not the rank and port of an engine in this test process
    log = open(killed / "first-attempt.log", "w")
    process = subprocess.Popen(command, cwd=PROJECT, env=env, stdout=log, stderr=log)
    run_dir = killed / "runs" / "dit-t"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and process.poll() is None:
        latest = CheckpointStore(run_dir).latest()
        if latest and latest["step"] >= 8:
            time.sleep(0.2)   # into the steps after the checkpoint
            break
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert CheckpointStore(run_dir).latest()["step"] in (8, 16, 24, 32), "killed too late"
    assert not (run_dir / "summary.json").exists(), "the run finished before it was killed"
    run_id = (run_dir / "tracking" / "run.json").read_text()

    subprocess.run(command, cwd=PROJECT, env=env, check=True, capture_output=True)
    assert (run_dir / "tracking" / "run.json").read_text() == run_id   # the same MLflow run
    reference_dir = tmp_path / "reference" / "runs" / "dit-t"
    assert same_tensors(engine_weights(run_dir), engine_weights(reference_dir))
    assert same_tensors(load_file(run_dir / "checkpoints" / "step-0000040" / "ema.safetensors"),
                        load_file(reference_dir / "checkpoints" / "step-0000040" /
                                  "ema.safetensors"))
    resumed = loss_history(mlflow_server.uri, json.loads(run_id)["run_id"])
    expected = loss_history(mlflow_server.uri, reference["run_id"])
    assert resumed == expected and sorted(resumed) == list(range(1, 41))
    points = MlflowClient(mlflow_server.uri).get_metric_history(json.loads(run_id)["run_id"],
                                                                "train/loss")
    assert len(points) == 40        # the replayed steps are not logged a second time
    assert (run_dir / "input_hashes.rank0.txt").read_text() == \
        (reference_dir / "input_hashes.rank0.txt").read_text()


def nan_noise_at(steps: set[int] | None, start: int | None = None):
    """Wraps the loop's input drawing so that some steps get NaN noise (a non-finite loss)."""
    real = steps_module.diffusion_inputs

    def inputs(seed, index, rank, *args):
        t, noise, labels = real(seed, index, rank, *args)
        if (steps and index in steps) or (start is not None and index >= start):
            noise = torch.full_like(noise, float("nan"))
        return t, noise, labels
    return inputs


def test_a_non_finite_step_is_skipped_and_training_goes_on(tmp_path, shards, mlflow_server,
                                                          monkeypatch):
    monkeypatch.setattr(steps_module, "diffusion_inputs", nan_noise_at({2}))
    summary = train_model(make_params(tmp_path, shards, mlflow_server.uri), "dit-t")
    client = MlflowClient(mlflow_server.uri)
    skipped = {m.step: m.value for m in client.get_metric_history(summary["run_id"],
                                                                  "train/skipped_steps")}
    assert skipped == {1: 0, 2: 0, 3: 1, 4: 0, 5: 0, 6: 0}
    assert 3 not in loss_history(mlflow_server.uri, summary["run_id"])
    weights = engine_weights(tmp_path / "runs" / "dit-t")
    assert all(torch.isfinite(w).all() for w in weights.values())


def test_k_non_finite_steps_in_a_row_stop_the_run_and_keep_the_last_good_checkpoint(
        tmp_path, shards, mlflow_server, monkeypatch):
    monkeypatch.setattr(steps_module, "diffusion_inputs", nan_noise_at(None, start=4))
    params = make_params(tmp_path, shards, mlflow_server.uri, steps=12, ckpt_every=4,
                         max_nonfinite_steps=3)
    with pytest.raises(NonFiniteLoss, match=r"3 optimiser steps in a row.*step 7.*checkpoint"):
        train_models(params, params.train.run_specs())
    run_dir = tmp_path / "runs" / "dit-t"
    assert CheckpointStore(run_dir).latest()["step"] == 4
    assert all(torch.isfinite(w).all() for w in engine_weights(run_dir).values())
    client = MlflowClient(mlflow_server.uri)
    parent = json.loads((tmp_path / "runs" / "pipeline" / "tracking" / "run.json").read_text())
    assert json.loads((run_dir / "summary.json").read_text())["status"] == "FAILED"
    assert client.get_run(parent["run_id"]).info.status == "FAILED"

    monkeypatch.undo()                  # the data is sound again: the resumed run finishes
    train_models(params, params.train.run_specs())
    assert json.loads((run_dir / "summary.json").read_text())["status"] == "FINISHED"
    assert client.get_run(parent["run_id"]).info.status == "FINISHED"


def test_after_a_divergence_the_healthy_checkpoint_survives_and_a_lower_lr_resumes_from_it(
        tmp_path, shards, mlflow_server, monkeypatch):
    """Resumed at lr 0.1, the loss explodes (1e2 .. 1e4) while the weights stay finite: those
    checkpoints are unhealthy, so pruning keeps the healthy one of step 4, and the NaN streak
    that follows (made here from step 13) rolls the run back to it."""
    def params(**train):
        return make_params(tmp_path, shards, mlflow_server.uri, ckpt_every=2, log_every=1,
                           keep_checkpoints=1, max_nonfinite_steps=3, **train)
    train_model(params(steps=4, lr=1e-3), "dit-t")
    with pytest.raises(CheckpointMismatch, match=r"lr: checkpoint has 0.001, this run has "
                                                 r"0.1(.|\n)*resume_changes"):
        train_model(params(steps=30, lr=0.1), "dit-t")
    monkeypatch.setattr(steps_module, "diffusion_inputs", nan_noise_at(None, start=12))
    with pytest.raises(NonFiniteLoss, match=r"up to step 15.*last healthy checkpoint.*"
                                            r"step-0000004 \(step 4\).*resume_changes"):
        train_model(params(steps=30, lr=0.1, resume_changes=["lr"]), "dit-t")
    store = CheckpointStore(tmp_path / "runs" / "dit-t")
    assert store.latest()["step"] == 4 and store.healthy()["step"] == 4
    assert [d.name for d in sorted(store.folder.glob("diverged/step-*"))] == ["step-0000014"]
    run_id = json.loads((store.folder.parent / "tracking" / "run.json").read_text())["run_id"]
    exploded = loss_history(mlflow_server.uri, run_id)
    assert all(max(exploded[step]) > 4 * 0.9 for step in range(6, 13))

    monkeypatch.undo()
    summary = train_model(params(steps=8, lr=1e-3, resume_changes=["lr"]), "dit-t")
    assert summary["status"] == "FINISHED" and summary["steps"] == 8
    history = loss_history(mlflow_server.uri, run_id)
    assert len(history[6]) == 2 and min(history[6]) < 2    # step 6 trained again, and logged
    client = MlflowClient(mlflow_server.uri)
    tags = client.get_run(run_id).data.tags
    assert tags["resumed_at_step_4"] == "lr: 0.001 -> 0.1"
    assert tags["diverged_at_step_15"] == "lr 0.1; rolled back to step 4"
    assert {m.value for m in client.get_metric_history(run_id, "train/lr") if m.step == 6} == \
        {0.1, 1e-3}


def test_a_checkpoint_is_healthy_while_the_loss_stays_in_range_and_no_streak_runs():
    guard, model = DivergenceGuard(max_streak=3, factor=4.0), torch.nn.Linear(2, 2)
    for loss in (1.0, 0.9, 0.8):
        assert not guard.observe(loss)
    assert guard.judge_checkpoint(model) and guard.reference == pytest.approx(0.9)
    for loss in (0.7, 3.5):             # mean 2.1 and last 3.5, both under 4 x 0.9
        guard.observe(loss)
    assert guard.judge_checkpoint(model) and guard.reference == pytest.approx(0.9)
    for losses in ((0.7, 4.0), (1e28,), (0.5, None)):   # last too high, exploded, mid-streak
        for loss in losses:
            guard.observe(loss)
        assert not guard.judge_checkpoint(model)
    assert not guard.observe(None) and guard.observe(None)     # a streak of 3 stops the run
    guard.observe(0.5)
    with torch.no_grad():
        model.weight[0, 0] = float("inf")
    assert not guard.judge_checkpoint(model)
    resumed = DivergenceGuard.from_state(guard.state(), max_streak=3, factor=4.0)
    assert (resumed.reference, resumed.streak) == (guard.reference, 0)


def test_a_checkpoint_of_another_configuration_is_refused_naming_the_difference(
        tmp_path, shards, mlflow_server):
    train_model(make_params(tmp_path, shards, mlflow_server.uri, steps=3), "dit-t")
    record = tmp_path / "runs" / "dit-t" / "deepspeed_config.json"
    written = record.read_text()
    with pytest.raises(CheckpointMismatch, match=r"global_batch: checkpoint has 16, this run "
                                                 r"has 32"):
        train_model(make_params(tmp_path, shards, mlflow_server.uri, steps=6, global_batch=32),
                    "dit-t")
    assert record.read_text() == written      # the refused run's batch of 32 is not recorded
    with pytest.raises(CheckpointMismatch) as refusal:
        train_model(make_params(tmp_path, shards, mlflow_server.uri, steps=6,
                                model_overrides={"class_dropout_prob": 0.2}), "dit-t")
    # the key that differs, not the whole model config
    assert "model_config.class_dropout_prob: checkpoint has 0.1, this run has 0.2" in \
        str(refusal.value) and "hidden_size" not in str(refusal.value)
    # the builder's default set explicitly is the same model: the run resumes
    summary = train_model(make_params(tmp_path, shards, mlflow_server.uri, steps=6,
                                      model_overrides={"class_dropout_prob": 0.1}), "dit-t")
    assert summary["status"] == "FINISHED" and summary["steps"] == 6


def test_more_loader_lanes_than_shards_are_refused_before_the_engine_or_mlflow_start(
        tmp_path, shards):
    from dice_core.data import DataError
    params = make_params(tmp_path, shards, f"sqlite:///{tmp_path / 'mlflow.db'}",
                         loader_workers=16)
    with pytest.raises(DataError, match="8 'train' shards cannot feed 1 ranks x 16 loader"):
        train_model(params, "dit-t")
    assert not (tmp_path / "runs").exists() and not (tmp_path / "mlflow.db").exists()


HOLD_LOCK = """
import sys, time
from dice_core.training.run_lock import RunFolderLock
lock = RunFolderLock(sys.argv[1]).__enter__()
print("held", flush=True)
time.sleep(300)
"""


def test_a_second_process_on_a_run_folder_in_use_is_refused_with_the_pid_of_the_first(
        tmp_path, shards):
    from dice_core.training import RunFolderInUse
    from dice_core.training.run_lock import RunFolderLock
    run_dir = tmp_path / "runs" / "dit-t"
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(run_dir)], cwd=PROJECT,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        params = make_params(tmp_path, shards, f"sqlite:///{tmp_path / 'mlflow.db'}")
        with pytest.raises(RunFolderInUse, match=f"in use by another training process "
                                                 f"\\(PID {holder.pid}\\)"):
            train_model(params, "dit-t")
        assert not (run_dir / "deepspeed_config.json").exists()
        assert not (tmp_path / "mlflow.db").exists()
    finally:
        holder.kill()                  # as SIGKILL leaves it: the lock goes with its process
        holder.wait()
    with RunFolderLock(run_dir):
        assert (run_dir / ".lock").read_text().strip() == str(os.getpid())


class RunsCode:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


def test_a_checkpoint_file_that_would_run_code_is_refused_at_resume(tmp_path, shards,
                                                                    mlflow_server):
    train_model(make_params(tmp_path, shards, mlflow_server.uri, steps=3), "dit-t")
    store = CheckpointStore(tmp_path / "runs" / "dit-t")
    states = store.folder / store.latest()["tag"] / "mp_rank_00_model_states.pt"
    marker = tmp_path / "code-ran"
    torch.save({"module": RunsCode(marker)}, states)
    # whoever can write the file can delete its checksums too: the load itself refuses it
    (states.parent / "checksums.json").unlink()
    with pytest.raises(CheckpointMismatch, match="holds more than tensors and plain values"):
        train_model(make_params(tmp_path, shards, mlflow_server.uri, steps=6), "dit-t")
    assert not marker.exists()


@pytest.mark.parametrize("train,message", [
    ({"global_batch": 10, "workers": 3, "backend": "ray"}, "does not split over 3 workers"),
    ({"micro_batch": 5}, "micro_batch = 5 does not divide the 16"),
    ({"workers": 2}, "needs train.backend: ray"),
    ({"precision": "fp16"}, "fp16 needs a GPU"),
])
def test_an_impossible_combination_fails_before_any_work(tmp_path, shards, train, message):
    from pipelines.cli import main as dice_main
    params_file = tmp_path / "params.yaml"
    params_file.write_text(yaml.safe_dump(training_params(tmp_path, shards, None, **train)))
    job = TrainingJob.of(load_params(params_file))
    with pytest.raises(ValueError, match=message):
        train_models(job, job.train.run_specs())
    assert dice_main(["train", "--params", str(params_file)]) == 2
    assert not (tmp_path / "runs").exists()


def test_mlflow_holds_nested_runs_metrics_at_their_steps_and_artifacts(tmp_path, shards,
                                                                       mlflow_server):
    raw = training_params(tmp_path, shards, mlflow_server.uri, eval_every=3)
    raw["tracking"]["log_images"] = True
    job = TrainingJob.of(Params.model_validate(raw))
    [summary] = train_models(job, job.train.run_specs())
    client = MlflowClient(mlflow_server.uri)
    run = client.get_run(summary["run_id"])
    parent_id = run.data.tags["mlflow.parentRunId"]
    assert client.get_run(parent_id).data.tags["kind"] == "pipeline"
    assert run.info.status == "FINISHED"
    assert run.data.params["model"] == "dit-t" and len(run.data.params["git_commit"]) >= 7
    assert run.data.params["data_params_hash"]
    assert sorted(loss_history(mlflow_server.uri, run.info.run_id)) == [1, 2, 3, 4, 5, 6]
    assert "emissions/codecarbon_kwh" in run.data.metrics
    assert "system/cpu_percent" in run.data.metrics
    assert "total/emissions/codecarbon_kwh" in client.get_run(parent_id).data.metrics
    artifacts = {a.path for folder in ("ema", "samples")
                 for a in client.list_artifacts(run.info.run_id, folder)}
    assert artifacts == {"ema/ema.safetensors", "samples/step-0000003.png",
                         "samples/step-0000006.png"}


def test_stopping_the_tracking_server_mid_run_neither_stops_training_nor_loses_metrics(
        tmp_path, shards, mlflow_server, monkeypatch, caplog):
    real_save = CheckpointStore.save

    def save_then_switch_the_server(self, engine, ema, state, healthy):
        path = real_save(self, engine, ema, state, healthy)
        if state["step"] == 3:
            mlflow_server.stop()
        elif state["step"] == 6:
            mlflow_server.start()
        return path

    monkeypatch.setattr(CheckpointStore, "save", save_then_switch_the_server)
    summary = train_model(make_params(tmp_path, shards, mlflow_server.uri, steps=9), "dit-t")
    assert summary["status"] == "FINISHED"
    assert sorted(loss_history(mlflow_server.uri, summary["run_id"])) == list(range(1, 10))
    unreachable = [r for r in caplog.records if "unreachable" in r.getMessage()]
    assert len(unreachable) == 1


def test_dice_train_accepts_a_family_name():
    from pipelines.train import select_models
    assert select_models(["dit"], ["dice-t", "dit-t"]) == ["dit-t"]
    assert select_models(["dimr-t"], ["dice-t"]) == ["dimr-t"]
    assert select_models(None, ["dice-t", "dit-t"]) == ["dice-t", "dit-t"]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="fp16 needs a GPU (DeepSpeed)")
def test_fp16_loss_scaling_skips_a_non_finite_step(tmp_path, shards, mlflow_server,
                                                   monkeypatch):
    monkeypatch.setattr(steps_module, "diffusion_inputs", nan_noise_at({2}))
    summary = train_model(make_params(tmp_path, shards, mlflow_server.uri, precision="fp16",
                                      device="cuda"), "dit-t")
    client = MlflowClient(mlflow_server.uri)
    skipped = {m.step: m.value for m in client.get_metric_history(summary["run_id"],
                                                                  "train/skipped_steps")}
    assert skipped[3] == 1 and summary["status"] == "FINISHED"
    scales = [m.value for m in client.get_metric_history(summary["run_id"], "train/loss_scale")]
    assert scales[2] <= scales[1]   # never raised by an overflow (hysteresis may delay a cut)


def test_a_run_stopped_for_non_finite_losses_ends_the_command_with_status_2(monkeypatch,
                                                                             capsys):
    import pipelines.train
    from pipelines.cli import main as dice_main

    def stopped(args):
        raise NonFiniteLoss("dit-t: 3 optimiser steps in a row had a non-finite loss")
    monkeypatch.setattr(pipelines.train, "run", stopped)
    assert dice_main(["train", "--model", "dit-t"]) == 2
    assert "error: dit-t: 3 optimiser steps in a row" in capsys.readouterr().err


def test_throughput_counts_the_steps_alone_and_evaluation_and_checkpoint_have_their_times(
        tmp_path, shards, mlflow_server, monkeypatch):
    """An evaluation and a checkpoint made 1.5 s slower each at step 3 stay out of the
    throughput of steps 4-6, and are logged as their own times."""
    from dice_core.training import loop
    from dice_core.training.periodic import Evaluation
    real_step, real_save, real_evaluate = loop.optimiser_step, CheckpointStore.save, \
        Evaluation.__call__
    step_seconds = {}

    def timed_step(s, step):
        started = time.perf_counter()
        loss = real_step(s, step)
        step_seconds[step + 1] = time.perf_counter() - started
        return loss

    def slower_at_step_3(real):
        def job(self, *args, **kwargs):
            result = real(self, *args, **kwargs)
            if 3 in (args[0], args[2].get("step") if len(args) > 2 else None):
                time.sleep(1.5)
            return result
        return job
    monkeypatch.setattr(loop, "optimiser_step", timed_step)
    monkeypatch.setattr(CheckpointStore, "save", slower_at_step_3(real_save))
    monkeypatch.setattr(Evaluation, "__call__", slower_at_step_3(real_evaluate))
    summary = train_model(make_params(tmp_path, shards, mlflow_server.uri, log_every=3,
                                      eval_every=3), "dit-t")
    client = MlflowClient(mlflow_server.uri)

    def logged(key):
        return {m.step: m.value for m in client.get_metric_history(summary["run_id"], key)}
    assert logged("time/eval_s")[3] >= 1.5 and logged("time/checkpoint_s")[3] >= 1.5
    assert set(logged("time/checkpoint_s")) == set(logged("time/eval_s")) == {3, 6}
    steps_per_s, images_per_s = logged("train/steps_per_s"), logged("train/images_per_s")
    # steps 4-6 and what little the loop does between them, not the 3 s spent at step 3
    assert 3 / steps_per_s[6] < sum(step_seconds[step] for step in (4, 5, 6)) + 1.5
    assert images_per_s[6] == pytest.approx(16 * steps_per_s[6])


@pytest.mark.slow
def test_ctrl_c_in_dice_train_says_where_it_stopped_exits_130_and_ends_its_mlflow_runs_killed(
        tmp_path, shards, mlflow_server):
    params_file = tmp_path / "params.yaml"
    params_file.write_text(yaml.safe_dump(training_params(tmp_path, shards, mlflow_server.uri,
                                                          steps=10**4, ckpt_every=4)))
    env = subprocess_env()      # not the rank and port of an engine in this test process
    run_dir = tmp_path / "runs" / "dit-t"
    with open(tmp_path / "train.log", "w+") as log:
        # a session of its own: Ctrl-C in a terminal reaches every process of the command.
        # SIGINT back to its default: a shell that started this suite in the background
        # leaves it ignored, and Python then never turns it into KeyboardInterrupt
        process = subprocess.Popen(train_command(params_file), cwd=PROJECT, env=env,
                                   stdout=log, stderr=log, start_new_session=True,
                                   preexec_fn=lambda: signal.signal(signal.SIGINT,
                                                                    signal.SIG_DFL))
        try:
            deadline = time.monotonic() + 300
            while process.poll() is None and time.monotonic() < deadline and not (
                    CheckpointStore(run_dir).latest() or {}).get("step"):
                time.sleep(0.1)
            os.killpg(process.pid, signal.SIGINT)
            assert process.wait(timeout=120) == 130
        finally:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
        log.seek(0)
        output = log.read()
    assert "Traceback" not in output and "KeyboardInterrupt" not in output, output
    [line] = [line for line in output.splitlines() if "interrupted" in line]
    latest = CheckpointStore(run_dir).latest()
    stopped_at = int(line.split("interrupted at step ")[1].split(";")[0])
    assert stopped_at >= latest["step"] > 0
    assert f"the last checkpoint is {run_dir / 'checkpoints' / latest['tag']}" in line
    assert "the same command (or dvc repro) resumes it" in line
    client = MlflowClient(mlflow_server.uri)
    for state in (run_dir / "tracking", tmp_path / "runs" / "pipeline" / "tracking"):
        run_id = json.loads((state / "run.json").read_text())["run_id"]
        assert client.get_run(run_id).info.status == "KILLED"
    assert json.loads((run_dir / "summary.json").read_text())["status"] == "KILLED"


def test_dice_evaluate_of_an_unknown_model_names_the_valid_ones(capsys):
    from pipelines.cli import main as dice_main
    assert dice_main(["evaluate", "--model", "no-such-model"]) == 2
    error = capsys.readouterr().err
    assert "unknown model 'no-such-model'; valid models are: " in error and "dit-t" in error
    assert "train it first" not in error
