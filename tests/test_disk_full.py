"""A full disk: a writer that must not leave a half-written file fails with one line that names
the file and says the disk is full (exit status 2), keeps nothing half-written under a final
name, and the same command run again once there is room continues where it stopped.

The disk fills for real: the stage runs in a process whose file-size limit is lowered, where a
write past it fails with EFBIG as one on a full disk fails with ENOSPC."""
import resource
import shutil
import signal
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path

import matplotlib.font_manager  # noqa: F401  (writes its font cache here, not under a limit)
import numpy as np
import pytest
import yaml

from dice_core.config import Params
from dice_core.data import Shapes, prepare_dataset, read_manifest
from dice_core.errors import DiskFull
from dice_core.evaluation.reference import reference_identity
from dice_core.metrics import save_reference
from dice_core.metrics.feature_set import FeatureSet
from dice_core.models import build_model
from dice_core.tracking.journal import Journal
from dice_core.training import checkpoint, train_model
from dice_core.training.checkpoint import CheckpointStore, checkpoint_bytes
from dice_core.training.engine import child_process_env
from helpers import training_job, training_params
from pipelines.cli import main as dice_main

PROJECT = Path(__file__).resolve().parents[1]
STATES = "mp_rank_00_model_states.pt"


def lower_file_size_limit(limit: int) -> None:
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)   # a write past it then fails with EFBIG
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))


def dice_with_file_size_limit(limit: int, *command: str) -> subprocess.CompletedProcess:
    """``dice <command>`` in a process that cannot write a file past ``limit`` bytes."""
    return subprocess.run([sys.executable, "-m", "pipelines.cli", *command], cwd=PROJECT,
                          env=child_process_env(), capture_output=True, text=True, timeout=400,
                          preexec_fn=lambda: lower_file_size_limit(limit))


def assert_stopped_for_a_full_disk(result: subprocess.CompletedProcess, path: Path) -> None:
    assert result.returncode == 2, result.stderr[-4000:]
    assert "Traceback" not in result.stderr, result.stderr[-4000:]
    assert result.stderr.strip().splitlines()[-1].startswith(
        f"error: the disk is full: {path} could not be written (File too large)")


def partial_files(folder: Path) -> list[Path]:
    return [path for path in folder.rglob("*") if ".partial" in path.name]


@pytest.mark.slow
def test_a_checkpoint_save_on_a_full_disk_stops_cleanly_and_the_rerun_resumes_from_the_last(
        tmp_path, tiny_shards, mlflow_server, monkeypatch):
    params_file = tmp_path / "params.yaml"
    params_file.write_text(yaml.safe_dump(training_params(tmp_path, tiny_shards,
                                                          mlflow_server.uri, ckpt_every=2)))
    train = ["train", "--params", str(params_file), "--steps"]
    assert dice_main([*train, "2"]) == 0     # here: DeepSpeed's CPU op is built, if it was not
    run_dir = tmp_path / "runs" / "dit-t"
    folder = CheckpointStore(run_dir).folder
    size = (folder / "step-0000002" / STATES).stat().st_size

    result = dice_with_file_size_limit(size // 2, *train, "4")
    assert_stopped_for_a_full_disk(result, folder / "step-0000004.partial" / STATES)
    assert sorted(p.name for p in folder.iterdir()) == ["latest.json", "step-0000002"]
    assert partial_files(run_dir) == []

    resumed = []
    resumable = CheckpointStore.resumable
    monkeypatch.setattr(CheckpointStore, "resumable",
                        lambda store: resumed.append(resumable(store)) or resumed[-1])
    assert dice_main([*train, "4"]) == 0
    assert resumed == [{"tag": "step-0000002", "step": 2}]
    assert CheckpointStore(run_dir).latest()["step"] == 4


def test_an_encode_shard_on_a_full_disk_stops_cleanly_and_the_rerun_keeps_the_shards_done(
        tmp_path):
    source = Shapes(num_classes=2, image_size=8, count_per_class={"train": 1, "val": 4})
    prepare_dataset(source, tmp_path / "prepared", splits=["train", "val"], resolution=8,
                    shard_size=4, progress=False)       # shards of 2, 4 and 4 images
    raw = yaml.safe_load((PROJECT / "params.yaml").read_text())
    raw["encode"].update(encoder="pixels", input=str(tmp_path / "prepared"),
                         output=str(tmp_path / "latents"), device="cpu")
    params_file = tmp_path / "params.yaml"
    params_file.write_text(yaml.safe_dump(raw))
    encode = ["encode", "--params", str(params_file)]
    assert dice_main([*encode, "--output", str(tmp_path / "clean")]) == 0
    clean = read_manifest(tmp_path / "clean")
    sizes = [record["size"] for record in clean["shards"]]
    assert sizes[0] < sizes[1] == sizes[2]

    latents = tmp_path / "latents"
    result = dice_with_file_size_limit((sizes[0] + sizes[1]) // 2, *encode)
    assert_stopped_for_a_full_disk(result, latents / "shard-000001.tar")
    assert sorted(p.name for p in latents.iterdir()) == ["journal.jsonl", "shard-000000.tar"]
    first = (latents / "shard-000000.tar").stat()

    assert dice_main(encode) == 0
    assert (latents / "shard-000000.tar").stat().st_mtime_ns == first.st_mtime_ns   # kept
    assert [r["sha256"] for r in read_manifest(latents)["shards"]] == [
        r["sha256"] for r in clean["shards"]]


@pytest.mark.slow
def test_the_report_on_a_full_disk_stops_cleanly_and_the_rerun_writes_it(
        tmp_path, tiny_shards, mlflow_server):
    raw = training_params(tmp_path, tiny_shards, mlflow_server.uri)
    raw["evaluate"].update(reference=str(tmp_path / "reference.npz"),
                           output=str(tmp_path / "eval"),
                           classifier=str(tmp_path / "no-classifier.safetensors"))
    raw["report"].update(output=str(tmp_path / "report"), ddpm_steps=4, timed_steps=2)
    params_file = tmp_path / "params.yaml"
    params_file.write_text(yaml.safe_dump(raw))
    network = Params.model_validate(raw).evaluate.feature_network
    save_reference(tmp_path / "reference.npz",
                   FeatureSet(pool=np.random.default_rng(0).normal(size=(16, 4))),
                   reference_identity(read_manifest(tiny_shards), network))

    out = tmp_path / "report"
    result = dice_with_file_size_limit(4096, "report", "--params", str(params_file))
    assert_stopped_for_a_full_disk(result, out / "fig11_fd_vs_step.png")
    assert list(out.iterdir()) == []

    assert dice_main(["report", "--params", str(params_file)]) == 0
    assert "## Table 1" in (out / "report.md").read_text()
    assert (out / "fig11_fd_vs_step.png").stat().st_size > 4096


@contextmanager
def file_size_limit(limit: int):
    """This process cannot write a file past ``limit`` bytes inside the block."""
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, handler)


def test_the_mlflow_journal_on_a_full_disk_takes_back_the_record_and_its_file(tmp_path):
    journal = Journal(tmp_path)
    journal.append({"kind": "metrics", "step": 1})
    kept = journal.path.read_bytes()
    artifact = tmp_path / "grid.png"
    artifact.write_bytes(bytes(8192))
    with file_size_limit(len(kept) + 100):
        with pytest.raises(DiskFull, match=f"{journal.path} could not be written"):
            journal.append({"kind": "tags", "values": {"note": "x" * 200}})
        with pytest.raises(DiskFull, match="grid.png could not be written"):
            journal.store_file("grid.png", lambda path: shutil.copy(artifact, path))
    assert journal.path.read_bytes() == kept       # no part of the record that did not fit
    assert list(journal.artifacts_dir.rglob("*.png")) == []

    journal.append({"kind": "metrics", "step": 2})   # room again: the journal goes on
    assert [record["step"] for record in Journal(tmp_path).records] == [1, 2]


def test_training_says_before_it_starts_when_the_disk_cannot_hold_two_checkpoints(
        tmp_path, tiny_shards, mlflow_server, monkeypatch, capsys):
    usage = shutil.disk_usage
    monkeypatch.setattr(checkpoint.shutil, "disk_usage",
                        lambda path: usage(path)._replace(free=10**6))
    train_model(training_job(tmp_path, tiny_shards, mlflow_server.uri, steps=1), "dit-t")
    run_dir = tmp_path / "runs" / "dit-t"
    assert f"warning: the disk of {run_dir} has 1.0 MB free, and two checkpoints" in \
        capsys.readouterr().err
    written = sum(f.stat().st_size for f in (run_dir / "checkpoints" / "step-0000001").iterdir())
    model = build_model("dit-t", in_channels=3, input_size=8, num_classes=2)
    assert 0.9 * written < checkpoint_bytes(model, "fp32") < 1.1 * written   # the estimate
