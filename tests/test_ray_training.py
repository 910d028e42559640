"""The training loop on Ray Train: two workers on a local cluster and on one started beforehand,
checkpoints reported to Ray's storage, and a re-run that resumes from them."""
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import yaml

from dice_core.config import Params, TrainingJob
from dice_core.data import DataError
from dice_core.training.ray_backend import restore_checkpoint, train_with_ray
from helpers import tiny_latents, with_runs

REPO = Path(__file__).resolve().parents[1]
MODEL = "dit-t"
os.environ.setdefault("TORCH_EXTENSIONS_DIR", str(REPO / ".cache" / "torch_extensions"))
# Ray reads these when it is first imported, and `ray start` must agree with this process: every
# cluster here listens on 127.0.0.1 only and uses token auth (as a local ray.init does anyway;
# a driver given an explicit address turns it on only when told).
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("RAY_AUTH_MODE", "token")


@pytest.fixture(scope="module")
def latents(tmp_path_factory):
    """4 shards of 8 shapes in pixel space, 8x8: at least one shard per rank."""
    return tiny_latents(tmp_path_factory.mktemp("ray-data"), num_classes=4, per_class=8,
                        image_size=16, resolution=8, shard_size=8)


def ray_params(latents, output: Path, steps: int, ray_address: str | None = None) -> TrainingJob:
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    raw["train"].update(models=[MODEL], data=str(latents), output=str(output), steps=steps,
                        global_batch=8, ckpt_every=2, log_every=1, eval_every=1000,
                        loader_workers=0, backend="ray", workers=2, ray_address=ray_address,
                        device="cpu", precision="fp32")
    with_runs(raw)
    raw["tracking"].update(uri=f"sqlite:///{output / 'mlflow.db'}", log_images=False)
    # no reference: the final step's evaluation must not pick up the project's data/
    raw["evaluate"]["reference"] = str(output / "no-reference.npz")
    return TrainingJob.of(Params.model_validate(raw))


def hash_lines(output: Path, rank: int) -> list[str]:
    return (output / MODEL / f"input_hashes.rank{rank}.txt").read_text().splitlines()


@pytest.fixture(scope="module")
def first_run(latents, tmp_path_factory):
    """Four steps on a local cluster; the hash logs as they were then."""
    output = tmp_path_factory.mktemp("ray-run")
    summary = train_with_ray(ray_params(latents, output, steps=4), MODEL, None)
    return output, summary, [hash_lines(output, rank) for rank in (0, 1)]


@pytest.mark.slow
def test_two_workers_train_checkpoint_and_report_to_ray_storage(first_run):
    output, summary, (rank0, rank1) = first_run
    assert summary["status"] == "FINISHED" and summary["steps"] == 4
    checkpoints = output / MODEL / "checkpoints"
    assert json.loads((checkpoints / "latest.json").read_text())["step"] == 4
    reported = output / "ray" / MODEL
    assert (reported / "step-0000004" / "state.json").is_file()
    assert (reported / "step-0000004" / "ema.safetensors").is_file()
    assert [int(line.split()[0]) for line in rank0] == [0, 1, 2, 3]
    assert len(rank1) == 4 and set(rank0).isdisjoint(rank1)  # each rank its own inputs


@pytest.mark.slow
def test_a_rerun_on_an_existing_cluster_resumes_from_ray_storage_without_local_checkpoints(
        first_run, latents, ray_cluster):
    """Two workers on a cluster started beforehand (`ray start`), resuming what the first run
    reported to Ray's storage."""
    output, _, (rank0_before, rank1_before) = first_run
    shutil.rmtree(output / MODEL / "checkpoints")
    summary = train_with_ray(ray_params(latents, output, steps=6, ray_address=ray_cluster),
                             MODEL, None)
    assert summary["status"] == "FINISHED" and summary["steps"] == 6
    rank0, rank1 = hash_lines(output, 0), hash_lines(output, 1)
    assert [int(line.split()[0]) for line in rank0] == [0, 1, 2, 3, 4, 5]
    assert len(rank1) == 6 and rank0[:4] == rank0_before and rank1[:4] == rank1_before
    assert (output / "ray" / MODEL / "step-0000006").is_dir()


def test_restore_copies_a_ray_checkpoint_only_into_a_run_folder_without_one(tmp_path):
    from ray.train import Checkpoint

    reported = tmp_path / "ray" / "step-0000004"
    reported.mkdir(parents=True)
    (reported / "state.json").write_text(json.dumps({"step": 4}))
    run_dir = tmp_path / "run"
    restore_checkpoint(None, run_dir)
    assert not (run_dir / "checkpoints").exists()

    restore_checkpoint(Checkpoint.from_directory(reported), run_dir)
    latest = run_dir / "checkpoints" / "latest.json"
    assert json.loads(latest.read_text()) == {"tag": "step-0000004", "step": 4, "healthy": None}
    assert (run_dir / "checkpoints" / "step-0000004" / "state.json").is_file()

    (reported / "state.json").write_text(json.dumps({"step": 6}))
    restore_checkpoint(Checkpoint.from_directory(reported), run_dir)
    assert json.loads(latest.read_text())["step"] == 4  # the run folder's own one is kept


def reported_checkpoints(storage: Path, health: dict[int, bool]) -> list:
    """Checkpoint folders in Ray's storage, as Ray reports them back: {step: healthy}."""
    from ray.train import Checkpoint
    from ray.train.v2.api.reported_checkpoint import ReportedCheckpoint, ReportedCheckpointStatus

    reported = []
    for step, healthy in health.items():
        folder = storage / f"step-{step:07d}"
        folder.mkdir(parents=True)
        (folder / "state.json").write_text(json.dumps({"step": step, "healthy": healthy}))
        reported.append(ReportedCheckpoint(Checkpoint.from_directory(folder),
                                           {"step": step, "healthy": int(healthy)},
                                           ReportedCheckpointStatus.COMMITTED))
    return reported


def test_a_restore_from_ray_keeps_the_healthy_checkpoint_to_roll_back_to(tmp_path):
    from dice_core.training.checkpoint import CheckpointStore
    from dice_core.training.ray_backend import newest_healthy

    reported = reported_checkpoints(tmp_path / "ray", {2: True, 4: False, 6: False})
    store = CheckpointStore(tmp_path / "run")
    restore_checkpoint(reported[-1].checkpoint, store.folder.parent, newest_healthy(reported))
    assert store.latest() == {"tag": "step-0000006", "step": 6,
                              "healthy": {"tag": "step-0000002", "step": 2}}
    assert store.roll_back_to_healthy() == {"tag": "step-0000002", "step": 2}
    assert store.latest()["tag"] == "step-0000002"
    assert [p.name for p in store.folder.glob("diverged/*")] == ["step-0000006"]

    healthy_latest = reported_checkpoints(tmp_path / "ray-healthy", {2: True, 4: True})
    store = CheckpointStore(tmp_path / "healthy-run")
    restore_checkpoint(healthy_latest[-1].checkpoint, store.folder.parent,
                       newest_healthy(healthy_latest))
    assert store.healthy() == {"tag": "step-0000004", "step": 4}
    assert [p.name for p in store.folder.glob("step-*")] == ["step-0000004"]


def test_ray_prunes_its_storage_to_the_newest_healthy_checkpoints_and_the_latest(tmp_path):
    """Ray's own checkpoint manager, under the configuration train_with_ray gives it."""
    import asyncio

    from ray.train.v2._internal.execution.checkpoint.checkpoint_manager import (
        CheckpointManager,
    )
    from ray.train.v2._internal.execution.storage import StorageContext
    from ray.train.v2._internal.execution.training_report import _TrainingReport

    from dice_core.training.ray_backend import checkpoint_config

    async def report_all():      # Ray's manager notifies its listeners on an event loop
        manager = CheckpointManager(checkpoint_config(keep=1),
                                    StorageContext(str(tmp_path), experiment_dir_name=MODEL))
        for reported in reported_checkpoints(tmp_path / MODEL, {2: True, 4: True, 6: False,
                                                                8: False}):
            manager.register_checkpoint(_TrainingReport(reported.checkpoint, reported.metrics,
                                                        validation=False))
    asyncio.run(report_all())
    assert sorted(p.name for p in (tmp_path / MODEL).glob("step-*")) == \
        ["step-0000004", "step-0000008"]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def ray_cluster():
    """A one-node cluster from `ray start --block`; terminating that process stops exactly this
    cluster (`ray stop` would stop every Ray process on the machine)."""
    ray = str(Path(sys.executable).parent / "ray")
    subprocess.run([ray, "get-auth-token", "--generate"], check=True, capture_output=True)
    port = free_port()
    temp_dir = tempfile.mkdtemp(prefix="ray-", dir="/tmp")
    # Without this the head waits 30 s on SIGTERM for a drain that nothing here needs.
    env = {**os.environ, "RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S": "0"}
    head = subprocess.Popen(
        [ray, "start", "--head", "--block", f"--port={port}", "--num-cpus=2",
         "--include-dashboard=false", f"--temp-dir={temp_dir}"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for_port(port, head)
        yield f"127.0.0.1:{port}"
    finally:
        head.terminate()
        head.wait(timeout=60)
        shutil.rmtree(temp_dir, ignore_errors=True)


def wait_for_port(port: int, process: subprocess.Popen, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert process.poll() is None, "ray start exited"
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.5)
    raise TimeoutError(f"no Ray head on port {port} after {timeout} s")


@pytest.mark.slow
def test_a_worker_error_is_raised_as_the_worker_raised_it(ray_cluster, tmp_path):
    missing = tmp_path / "no-latents"
    with pytest.raises(DataError, match="manifest.json not found"):
        train_with_ray(ray_params(missing, tmp_path, steps=2, ray_address=ray_cluster), MODEL,
                       None)


def test_an_unreachable_cluster_is_refused_at_once_naming_its_address(latents, tmp_path):
    from mlflow.tracking import MlflowClient

    from dice_core.errors import InputError
    from dice_core.training.runner import train_models

    address = f"127.0.0.1:{free_port()}"       # nothing listens there
    job = ray_params(latents, tmp_path, steps=2, ray_address=address)
    started = time.monotonic()
    with pytest.raises(InputError, match=f"no Ray cluster answers at {address} "):
        train_models(job, job.train.run_specs())
    assert time.monotonic() - started < 60
    client = MlflowClient(job.tracking.uri)
    runs = client.search_runs([client.get_experiment_by_name(job.tracking.experiment)
                               .experiment_id])
    assert runs and {run.info.status for run in runs} == {"FAILED"}
