"""The training loop on Ray Train: ``train.workers`` workers, DeepSpeed over the process group
that TorchTrainer sets up, every checkpoint also reported to Ray's storage
(``<train.output>/ray/<model>``), from which a re-run resumes when the run folder has lost it.
Ray keeps the newest ``train.keep_checkpoints`` healthy checkpoints there, and the latest."""
from __future__ import annotations

import json
import os
import shutil
import socket
import tempfile
from contextlib import contextmanager
from pathlib import Path

from dice_core.config import TrainingJob
from dice_core.devices import reuse_freed_cpu_memory
from dice_core.errors import InputError

from .checkpoint import CheckpointStore, barrier
from .loop import train_model
from .session import Placement


def train_with_ray(job: TrainingJob, model_name: str, parent_run_id: str | None) -> dict:
    """Trains ``model_name`` with the job's training seed on Ray (resuming its run) and returns
    rank 0's summary. A worker's error is raised here as the worker raised it."""
    train = job.train
    if train.ray_address is None:
        # Read when ray is first imported: a cluster started here then listens on 127.0.0.1.
        os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    import ray.train
    from ray.train.torch import TorchTrainer

    output = Path(train.output).resolve()
    config = {"job": job.model_dump(mode="json"), "model": model_name,
              "parent_run_id": parent_run_id, "cwd": os.getcwd()}
    with ray_connection(train.ray_address, train.workers):
        trainer = TorchTrainer(
            train_loop_per_worker, train_loop_config=config,
            scaling_config=ray.train.ScalingConfig(
                num_workers=train.workers, use_gpu=wants_gpus(train.device)),
            run_config=ray.train.RunConfig(
                name=job.run_name(model_name), storage_path=str(output / "ray"),
                checkpoint_config=checkpoint_config(train.keep_checkpoints)))
        try:
            trainer.fit()
        except ray.train.TrainingFailedError as error:
            failure = worker_failure(error)
            if failure is None:
                raise
            raise failure from error
    return json.loads((job.run_dir(model_name) / "summary.json").read_text())


@contextmanager
def ray_connection(address: str | None, workers: int):
    """Uses the Ray this process is already connected to, connects to ``address`` ("auto",
    "host:port", "ray://host:port"), or starts a local cluster (``address`` None); undoes only
    what it did."""
    import ray

    if ray.is_initialized():
        yield
        return
    temp_dir = None
    if address is None:
        # A short path: Ray's unix sockets live under it.
        temp_dir = tempfile.mkdtemp(prefix="ray-", dir="/tmp")
        ray.init(include_dashboard=False, num_cpus=max(workers, os.cpu_count() or 1),
                 _temp_dir=temp_dir)
    else:
        connect(address)
    try:
        yield
    finally:
        ray.shutdown()
        if temp_dir:
            shutil.rmtree(temp_dir, ignore_errors=True)


def connect(address: str) -> None:
    """``ray.init(address)``, refused at once where no cluster answers (at a host:port where
    nothing listens, Ray itself tries again for good)."""
    import ray

    if address != "auto":
        try:
            socket.create_connection(host_and_port(address), timeout=10).close()
        except (OSError, ValueError) as error:
            raise no_cluster(address, error) from None
    try:
        ray.init(address=address)
    except ConnectionError as error:       # "auto" where no cluster runs
        raise no_cluster(address, error) from None


def no_cluster(address: str, error: Exception) -> InputError:
    return InputError(f"no Ray cluster answers at {address} ({error}): start one there (ray "
                      "start --head), correct train.ray_address (--ray-address), or leave it "
                      "null for a local cluster")


def host_and_port(address: str) -> tuple[str, int]:
    """("host", port) of "host:port" or "ray://host:port"."""
    host, _, port = address.removeprefix("ray://").rpartition(":")
    return host.strip("[]"), int(port)


def checkpoint_config(keep: int):
    """Ray prunes the checkpoints that score lowest, the older first among equal scores, and
    never the latest: scored by health, the newest healthy ones stay, to roll back to."""
    import ray.train

    return ray.train.CheckpointConfig(num_to_keep=keep, checkpoint_score_attribute="healthy",
                                      checkpoint_score_order="max")


def wants_gpus(device: str) -> bool:
    """``auto`` follows the cluster, which may have GPUs where this process has none."""
    import ray

    if device == "auto":
        return ray.cluster_resources().get("GPU", 0) > 0
    return device.startswith("cuda")


def worker_failure(error) -> Exception | None:
    """What the lowest failing rank raised (Ray keeps its type); None for a controller error."""
    failures = getattr(error, "worker_failures", None)
    return failures[min(failures)] if failures else None


def train_loop_per_worker(config: dict) -> None:
    """One worker: its rank and device from Ray, then the loop the local backend runs."""
    import ray.train
    import ray.train.torch

    reuse_freed_cpu_memory()      # this worker's process is Ray's, not one of our entry points
    job = TrainingJob.model_validate(config["job"])
    model_name = config["model"]
    # Ray starts workers in its own folder; relative paths in the job mean the caller's.
    os.chdir(config["cwd"])
    context = ray.train.get_context()
    rank, world_size = context.get_world_rank(), context.get_world_size()
    # initialize_engine keeps a RANK it finds, so DeepSpeed joins TorchTrainer's process group.
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world_size),
                      LOCAL_RANK=str(context.get_local_rank()))

    run_dir = job.run_dir(model_name)
    if rank == 0:
        restore_checkpoint(ray.train.get_checkpoint(), run_dir,
                           newest_healthy(ray.train.get_all_reported_checkpoints()))
    barrier()

    def report(path: Path, metrics: dict) -> None:
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(path),
                         checkpoint_dir_name=path.name)

    train_model(job, model_name, Placement(rank, world_size, ray.train.torch.get_device(),
                                        config["parent_run_id"], on_checkpoint=report))


def newest_healthy(reported: list):
    """The newest of Ray's reported checkpoints that was healthy when written, or None."""
    healthy = [r for r in reported if r.metrics.get("healthy")]
    return max(healthy, key=lambda r: r.metrics["step"]).checkpoint if healthy else None


def restore_checkpoint(checkpoint, run_dir: Path, healthy=None) -> None:
    """Copies Ray's latest checkpoint, and ``healthy`` (its newest healthy one) as well, into a
    run folder that has none, where the loop resumes from it and can roll back to the healthy
    one."""
    store = CheckpointStore(run_dir)
    if checkpoint is None or store.latest() is not None:
        return
    tag = Path(checkpoint.path).name
    if healthy is not None and Path(healthy.path).name != tag:
        copy_in(healthy, store.folder)
    copy_in(checkpoint, store.folder)
    store.adopt(tag)


def copy_in(checkpoint, folder: Path) -> None:
    """Ray's ``checkpoint`` as ``folder/<its name>``, replaced whole."""
    tag = Path(checkpoint.path).name
    partial = folder / f"{tag}.partial"
    shutil.rmtree(partial, ignore_errors=True)
    checkpoint.to_directory(str(partial))
    shutil.rmtree(folder / tag, ignore_errors=True)
    os.replace(partial, folder / tag)
