"""Training seeds as a dimension of the experiment: one run (folder, DVC stage, MLflow child run)
per model and seed, seed 42's keeping the model's name; bad seed lists and stale run lists
refused naming their key."""
import shutil
from pathlib import Path

import pytest
import yaml
from mlflow.tracking import MlflowClient
from safetensors.torch import load_file

from dice_core.config import Params, ParamsError, TrainingJob, load_params, run_name
from dice_core.training import CheckpointMismatch, ema_weights_path, train_model
from dice_core.training.runner import train_models
from helpers import tiny_latents, training_params, with_runs
from pipelines.cli import main as dice_main

PROJECT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    return tiny_latents(tmp_path_factory.mktemp("seed-data"), num_classes=2, per_class=8,
                        image_size=8, resolution=8, shard_size=8)


def project_params(tmp_path, mutate) -> Path:
    raw = yaml.safe_load((PROJECT / "params.yaml").read_text())
    mutate(raw["train"])
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def test_the_runs_of_seed_42_keep_the_models_name_and_the_others_carry_their_seed():
    assert run_name("dice-t", 42) == "dice-t"
    assert run_name("dice-t-onehand", 1) == "dice-t-onehand-s1"
    params = load_params(PROJECT / "params.yaml")
    assert params.train.seeds == [42]
    assert list(params.train.runs) == params.train.models


@pytest.mark.parametrize("seeds,message", [
    ([], r"train\.seeds: List should have at least 1 item"),
    ([1, 2, 1], r"train\.seeds: Value error, \[1, 2, 1\] names a value twice"),
])
def test_an_empty_or_repeating_seed_list_is_refused_naming_the_key(tmp_path, seeds, message):
    path = project_params(tmp_path, lambda train: train.update(seeds=seeds))
    with pytest.raises(ParamsError, match=message):
        load_params(path)
    assert dice_main(["runs", "--params", str(path)]) == 2


def test_an_ablation_that_is_not_a_preset_is_refused_naming_the_key(tmp_path):
    def mutate(train):
        train["models"].append("dice-t-twohands")
        train["per_model"]["dice-t-twohands"] = {}
    path = project_params(tmp_path, mutate)
    with pytest.raises(ParamsError, match=r"train\.models: .*unknown model 'dice-t-twohands'; "
                                          r"valid models are: .*dice-t-onehand"):
        load_params(path)


def test_a_run_list_behind_its_models_and_seeds_is_refused_and_dice_runs_writes_it(
        tmp_path, capsys):
    path = project_params(tmp_path, lambda train: train.update(seeds=[42, 7]))
    with pytest.raises(ParamsError, match=r"train: .*runs does not list one run per model .*"
                                          r"run `dice runs`"):
        load_params(path)
    assert dice_main(["runs", "--params", str(path)]) == 0
    assert "6 runs (3 models x 2 seeds)" in capsys.readouterr().out
    runs = load_params(path).train.runs
    assert list(runs) == ["dice-t", "dit-t", "dimr-t", "dice-t-s7", "dit-t-s7", "dimr-t-s7"]
    assert (runs["dit-t-s7"].model, runs["dit-t-s7"].seed) == ("dit-t", 7)
    assert dice_main(["runs", "--params", str(path)]) == 0
    assert "up to date" in capsys.readouterr().out


def test_the_study_profile_writes_five_models_by_three_seeds(tmp_path):
    path = tmp_path / "params.yaml"
    shutil.copy(PROJECT / "params.yaml", path)
    assert dice_main(["profile", "study", "--params", str(path)]) == 0
    train = load_params(path).train
    assert train.models == ["dice-t", "dit-t", "dimr-t", "dice-t-onehand", "dice-t-residual"]
    assert train.seeds == [42, 1, 2] and len(train.runs) == 15
    assert {(run.model, run.seed) for run in train.runs.values()} == {
        (model, seed) for model in train.models for seed in train.seeds}


def test_dvc_makes_a_train_and_an_evaluate_stage_of_every_run(tmp_path):
    from dvc.repo import Repo
    path = project_params(tmp_path, lambda train: train.update(seeds=[42, 3]))
    shutil.copy(PROJECT / "dvc.yaml", tmp_path / "dvc.yaml")
    raw = with_runs(yaml.safe_load(path.read_text()))
    path.write_text(yaml.safe_dump(raw))
    Repo.init(str(tmp_path), no_scm=True)
    with Repo(str(tmp_path)) as repo:
        stages = {stage.name: stage for stage in repo.index.stages}
    assert {"train@dice-t", "train@dice-t-s3", "evaluate@dimr-t-s3"} <= set(stages)
    assert stages["train@dit-t-s3"].cmd == ("python -m pipelines.train --model dit-t "
                                            "--training-seed 3")
    assert [str(out) for out in stages["train@dit-t-s3"].outs] == ["runs/dit-t-s3"]
    assert [str(out) for out in stages["train@dit-t"].outs] == ["runs/dit-t"]


def test_each_training_seed_is_its_own_run_folder_and_tagged_child_run_under_one_parent(
        tmp_path, shards, mlflow_server):
    raw = training_params(tmp_path, shards, mlflow_server.uri, steps=2, ckpt_every=2,
                          seeds=[42, 7])
    job = TrainingJob.of(Params.model_validate(with_runs(raw)))
    first, other = train_models(job, job.train.run_specs())
    runs = tmp_path / "runs"
    assert (first["run_dir"], other["run_dir"]) == (str(runs / "dit-t"), str(runs / "dit-t-s7"))
    assert (first["seed"], other["seed"]) == (42, 7)
    # another seed: other initial weights (and data order and noise)
    assert load_file(ema_weights_path(runs / "dit-t"))["x_embedder.weight"].ne(
        load_file(ema_weights_path(runs / "dit-t-s7"))["x_embedder.weight"]).any()
    client = MlflowClient(mlflow_server.uri)
    tags = [client.get_run(s["run_id"]).data.tags for s in (first, other)]
    assert [(t["model"], t["seed"], t["variant"]) for t in tags] == [
        ("dit-t", "42", "base"), ("dit-t", "7", "base")]
    assert tags[0]["mlflow.parentRunId"] == tags[1]["mlflow.parentRunId"]
    assert client.get_run(other["run_id"]).data.params["sampling_seed"] == "42"


def test_an_old_run_folder_is_adopted_as_seed_42_and_one_of_another_seed_refused(
        tmp_path, shards, mlflow_server):
    def job(steps, seed=42):
        raw = training_params(tmp_path, shards, mlflow_server.uri, steps=steps, ckpt_every=2)
        return TrainingJob.of(Params.model_validate(raw)).seeded(seed)
    summary = train_model(job(2), "dit-t")
    client = MlflowClient(mlflow_server.uri)
    for tag in ("seed", "variant"):      # as a run from before training seeds has them
        client.delete_tag(summary["run_id"], tag)
    resumed = train_model(job(4), "dit-t")
    assert resumed["run_id"] == summary["run_id"] and resumed["steps"] == 4
    tags = client.get_run(summary["run_id"]).data.tags
    assert (tags["seed"], tags["variant"]) == ("42", "base")

    train_model(job(2, seed=5), "dit-t")
    shutil.rmtree(tmp_path / "runs" / "dit-t")     # an old folder trained with seed 5
    (tmp_path / "runs" / "dit-t-s5").rename(tmp_path / "runs" / "dit-t")
    with pytest.raises(CheckpointMismatch, match=r"(?s)seed: .*adopted as the run of seed 42 "
                                                 r"only when that seed was 42"):
        train_model(job(4), "dit-t")


def test_a_training_seed_outside_train_seeds_is_refused(tmp_path, shards, capsys):
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(training_params(tmp_path, shards, None)))
    assert dice_main(["train", "--params", str(path), "--training-seed", "3"]) == 2
    assert "--training-seed 3 is not in train.seeds [42]" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()
