"""A damaged or missing checkpoint: resume names it and goes on from the newest intact healthy
checkpoint before it, which that run does not prune (the real DeepSpeed engine, dit-t on tiny
shards)."""
import json
import shutil

import pytest
import torch

from dice_core.training import CheckpointMismatch, train_model
from dice_core.training.checkpoint import CHECKSUMS, STATE_FILE, CheckpointStore, file_checksums
from helpers import training_job

STATES = "mp_rank_00_model_states.pt"


def cut_in_half(path):
    path.write_bytes(path.read_bytes()[:path.stat().st_size // 2])


def flip_a_byte(path):
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x10
    path.write_bytes(bytes(data))


def module_weights(path) -> dict:
    return torch.load(path, weights_only=False)["module"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_shards, _mlflow_server_process):
    """A dit-t run folder with checkpoints at steps 2 and 4."""
    root = tmp_path_factory.mktemp("trained")
    train_model(training_job(root, tiny_shards, _mlflow_server_process.start().uri, steps=4,
                             ckpt_every=2), "dit-t")
    return root / "runs" / "dit-t"


@pytest.mark.parametrize("damage", ["cut", "flip", "delete"])
def test_a_damaged_or_missing_newest_checkpoint_is_named_and_the_one_before_resumed_and_kept(
        tmp_path, trained, tiny_shards, mlflow_server, capsys, damage):
    run_dir = tmp_path / "runs" / "dit-t"
    shutil.copytree(trained, run_dir, ignore=shutil.ignore_patterns("tracking"))
    folder = CheckpointStore(run_dir).folder
    older, newest = folder / "step-0000002", folder / "step-0000004"
    written = module_weights(newest / STATES)
    if damage == "cut":
        cut_in_half(newest / STATES)
    elif damage == "flip":
        flip_a_byte(newest / STATES)
        (older / CHECKSUMS).unlink()   # as a checkpoint written before checksums: trusted
    else:
        shutil.rmtree(newest)
    capsys.readouterr()

    summary = train_model(training_job(tmp_path, tiny_shards, mlflow_server.uri, steps=6,
                                       ckpt_every=2), "dit-t")
    said = capsys.readouterr().err
    named = newest if damage == "delete" else newest / STATES
    assert f"{named} is " in said and f"resuming from {older} (step 2)" in said
    assert summary["status"] == "FINISHED" and summary["steps"] == 6
    assert sorted(p.name for p in folder.glob("step-*")) == [
        "step-0000002", "step-0000004", "step-0000006"]       # nothing pruned by this run
    new = module_weights(newest / STATES)    # step 4 trained again from step 2, as before
    assert written.keys() == new.keys() and all(torch.equal(written[k], new[k]) for k in new)


def fake_checkpoint(folder, step, healthy=True):
    """A checkpoint folder as CheckpointStore.save leaves it, its files' content made up."""
    checkpoint = folder / f"step-{step:07d}"
    checkpoint.mkdir(parents=True)
    (checkpoint / STATES).write_bytes(bytes(range(256)) * 4)
    (checkpoint / STATE_FILE).write_text(json.dumps({"step": step, "healthy": healthy}))
    (checkpoint / CHECKSUMS).write_text(json.dumps(file_checksums(checkpoint)))
    (folder / "latest.json").write_text(json.dumps({"tag": checkpoint.name, "step": step}))
    return checkpoint


def test_the_fall_back_passes_over_an_intact_checkpoint_that_was_not_healthy(tmp_path, capsys):
    store = CheckpointStore(tmp_path)
    fake_checkpoint(store.folder, 10)
    fake_checkpoint(store.folder, 20, healthy=False)
    cut_in_half(fake_checkpoint(store.folder, 30) / STATES)
    assert store.resumable() == {"tag": "step-0000010", "step": 10}
    said = capsys.readouterr().err
    assert f"{store.folder / 'step-0000020'} is intact but was not healthy" in said
    assert not store.prunes


def test_with_no_intact_checkpoint_the_resume_stops_and_says_to_delete_the_run_folder(tmp_path):
    store = CheckpointStore(tmp_path)
    flip_a_byte(fake_checkpoint(store.folder, 10) / STATES)
    cut_in_half(fake_checkpoint(store.folder, 20) / STATES)
    with pytest.raises(CheckpointMismatch, match=f"Delete {tmp_path} to start this run afresh"):
        store.resumable()
    assert (store.folder / "step-0000010").is_dir() and (store.folder / "step-0000020").is_dir()
