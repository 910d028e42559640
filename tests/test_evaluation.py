"""Evaluation of trained models: reference statistics, `dice evaluate`, the in-training hook."""
import json
import shutil

import numpy as np
import pytest
import torch
import yaml
from mlflow.tracking import MlflowClient

from dice_core.config import Params, TrainingJob
from dice_core.data import read_manifest, seal_manifest
from dice_core.data.encoders import decoder_for
from dice_core.evaluation.evaluate import evaluate_model
from dice_core.evaluation.reference import build_reference
from dice_core.evaluation.sampling import sample_images
from dice_core.metrics import (
    FID_WEIGHTS_FILE,
    ReferenceMismatchError,
    frechet_distance_to_features,
    load_reference,
    precision_recall,
)
from dice_core.models import build_model
from dice_core.models.serialization import load_model, save_model
from dice_core.training import ema_weights_path, train_model
from helpers import random_inception_weights, tiny_latents, training_params, with_runs
from pipelines.cli import main as dice_main


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval-data")
    tiny_latents(root, num_classes=3, per_class=8, image_size=16, resolution=16, shard_size=8)
    return root


def eval_params(tmp_path, data, uri, **evaluate) -> dict:
    raw = training_params(tmp_path, data / "latents", uri, steps=2, ckpt_every=2)
    raw["prepare"]["output"] = str(data / "prepared")
    raw["encode"]["output"] = str(data / "latents")
    raw["evaluate"].update({"reference": str(data / "reference.npz"), "samples": 6, "steps": 4,
                            "batch_size": 4, "output": str(tmp_path / "eval"), "device": "cpu",
                            "classifier": str(tmp_path / "no-classifier.safetensors"),
                            **evaluate})
    raw["classifier"].update(output=str(tmp_path / "classifier.safetensors"), epochs=20,
                             batch_size=16, input_size=16, holdout_fraction=0.25, device="cpu")
    return raw


@pytest.fixture(scope="module")
def reference(data):
    config = Params.model_validate(eval_params(data, data, None)).evaluate
    return build_reference(config, data / "prepared", data / "latents")


def test_the_reference_records_what_it_was_made_for(reference, data):
    assert reference["network"] == "effnet" and reference["count"] == 24
    assert reference["resolution"] == 16 and reference["encoder"] == "pixels"


def test_dice_evaluate_writes_metrics_samples_and_grid_and_repeats_exactly(
        tmp_path, data, reference, mlflow_server):
    raw = eval_params(tmp_path, data, mlflow_server.uri)
    params_file = tmp_path / "params.yaml"
    params_file.write_text(yaml.safe_dump(raw))
    train_model(TrainingJob.of(Params.model_validate(raw)), "dit-t")
    outputs = []
    for attempt in ("first", "second"):
        out = tmp_path / attempt
        assert dice_main(["evaluate", "--params", str(params_file), "--model", "dit-t",
                          "--output", str(out)]) == 0
        folder = out / "dit-t"
        with np.load(folder / "samples.npz") as samples:
            images, labels = samples["arr_0"], samples["arr_1"]
        assert images.shape == (6, 16, 16, 3) and images.dtype == np.uint8
        assert labels.dtype == np.int64 and list(labels) == [0, 1, 2, 0, 1, 2]
        assert (folder / "grid.png").is_file()
        outputs.append((images, json.loads((folder / "metrics.json").read_text())))
    np.testing.assert_array_equal(outputs[0][0], outputs[1][0])
    assert outputs[0][1] == outputs[1][1]
    metrics = outputs[0][1]
    assert metrics["feature_network"] == "effnet" and metrics["num_samples"] == 6
    assert {"fd_effnet", "is_effnet", "precision_effnet", "recall_effnet"} <= set(metrics)
    assert "fid" not in metrics   # only Inception results are called FID


def test_a_reference_for_another_encoder_or_resolution_is_refused(tmp_path, data, reference):
    raw = eval_params(tmp_path, data, None)
    config = Params.model_validate(raw).evaluate
    manifest = read_manifest(data / "latents")
    model = build_model("dit-t", in_channels=3, input_size=16, num_classes=3).eval()
    for field, value in (("encoder", "vae:sd-vae-ft-ema"), ("resolution", 256)):
        with pytest.raises(ReferenceMismatchError, match=f"{field}="):
            evaluate_model(model, {**manifest, field: value}, config, 0, tmp_path / field)


@pytest.fixture
def one_thread():
    """As in test_metrics: on two shared cores a second OpenMP thread slows Inception's
    convolutions several times over."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def imagenet_latents(tmp_path, data):
    """The test's latents as if prepared from ImageNet, the data ADM's batches are made for."""
    latents = tmp_path / "imagenet-latents"
    shutil.copytree(data / "latents", latents)
    manifest = json.loads((latents / "manifest.json").read_text())
    manifest["source"] = {**manifest["source"], "name": "imagenet"}
    (latents / "manifest.json").write_text(json.dumps(seal_manifest(manifest)))
    return latents


def write_adm_batch(path, images, pool_dim=2048, spatial_dim=2023):
    """An ADM reference batch: statistics of Inception's pool and spatial features, and images."""
    rng = np.random.default_rng(0)
    np.savez(path, mu=rng.random(pool_dim), sigma=np.diag(rng.random(pool_dim)),
             mu_s=rng.random(spatial_dim), sigma_s=np.diag(rng.random(spatial_dim)), arr_0=images)
    return path


def random_model(tmp_path):
    path = tmp_path / "dit-t.safetensors"
    save_model(build_model("dit-t", in_channels=3, input_size=16, num_classes=3), path)
    return path


def test_dice_evaluate_against_an_adm_reference_batch_gives_all_five_metrics(tmp_path, data,
                                                                            one_thread):
    latents = imagenet_latents(tmp_path, data)
    raw = eval_params(tmp_path, data, None, feature_network="inception", samples=5,
                      reference=str(tmp_path / "imagenet-reference.npz"),
                      fd_square_root="exact")   # ADM's: two 2000 x 2000 roots, minutes here
    raw["train"]["data"] = str(latents)
    checkpoint = random_model(tmp_path)
    manifest = read_manifest(latents)
    samples = sample_images(load_model(checkpoint).eval(), decoder_for(manifest, "cpu"),
                            count=5, num_classes=3, seed=raw["seed"], steps=4, batch_size=4,
                            latent_shape=tuple(manifest["latent_shape"]))
    # three of the samples the evaluation will draw, and three dark images far from them
    images = np.concatenate([samples[:3], np.random.default_rng(1).integers(
        0, 30, (3, 16, 16, 3), dtype=np.uint8)])
    batch = write_adm_batch(tmp_path / "VIRTUAL_imagenet16_labeled.npz", images)
    weights = tmp_path / FID_WEIGHTS_FILE
    random_inception_weights(weights, calibration_images=images)
    raw["evaluate"]["inception_weights"] = str(weights)
    params_file = tmp_path / "params.yaml"
    params_file.write_text(yaml.safe_dump(raw))

    assert dice_main(["reference", "--params", str(params_file),
                      "--reference-batch", str(batch)]) == 0
    assert dice_main(["evaluate", "--params", str(params_file), "--model", "dit-t",
                      "--checkpoint", str(checkpoint)]) == 0

    folder = tmp_path / "eval" / "dit-t"
    metrics = json.loads((folder / "metrics.json").read_text())
    assert {"fid", "sfid", "inception_score", "precision", "recall"} <= set(metrics)
    assert metrics["pr_distances"] == "float16" and metrics["fd_square_root"] == "exact"
    with np.load(folder / "samples.npz") as written:
        np.testing.assert_array_equal(written["arr_0"], samples)   # uint8 NHWC
        assert written["arr_1"].dtype == np.int64 and list(written["arr_1"]) == [0, 1, 2, 0, 1]
    with np.load(folder / "features.npz") as features:
        sample_pool = features["pool"]
    with np.load(batch) as adm:
        assert metrics["fid"] == pytest.approx(
            frechet_distance_to_features(adm["mu"], adm["sigma"], sample_pool, "exact"),
            rel=1e-12)   # ADM's statistics, not those of its 6 images
    kept, meta = load_reference(tmp_path / "imagenet-reference.npz", expected={})
    assert meta["origin"] == "adm-reference-batch" and meta["count"] == 6
    # the reference's pool rows are features of its arr_0: the samples among them match
    np.testing.assert_allclose(kept.pool[:3], sample_pool[:3], rtol=1e-4, atol=1e-5)
    assert (metrics["precision"], metrics["recall"]) == precision_recall(
        kept.pool, sample_pool, distances="float16")
    assert metrics["recall"] == 0.5   # the sampled images are covered, the dark ones not


def test_an_adm_batch_for_other_data_or_another_resolution_is_refused_saying_what_to_do(
        tmp_path, data, capsys):
    batch = write_adm_batch(tmp_path / "VIRTUAL_imagenet16_labeled.npz",
                            np.zeros((4, 16, 16, 3), np.uint8), pool_dim=8, spatial_dim=4)
    raw = eval_params(tmp_path, data, None, feature_network="inception", reference=str(batch))
    config = Params.model_validate(raw).evaluate
    manifest = read_manifest(data / "latents")
    model = build_model("dit-t", in_channels=3, input_size=16, num_classes=3).eval()
    for source, resolution in (("fashion-mnist", 16), ("imagenet", 32)):
        with pytest.raises(ReferenceMismatchError,
                           match=r"made for ImageNet at 16x16 .*dvc repro reference"):
            evaluate_model(model, {**manifest, "source": {"name": source},
                                   "resolution": resolution}, config, 0, tmp_path / source)
    params_file = tmp_path / "params.yaml"
    params_file.write_text(yaml.safe_dump(raw))   # the shapes data, through the command
    assert dice_main(["evaluate", "--params", str(params_file), "--model", "dit-t",
                      "--checkpoint", str(random_model(tmp_path))]) == 2
    assert "source='shapes'" in capsys.readouterr().err


def test_evaluate_without_a_trained_model_says_what_to_do(tmp_path, data, capsys):
    params_file = tmp_path / "params.yaml"
    params_file.write_text(yaml.safe_dump(eval_params(tmp_path, data, None)))
    assert dice_main(["evaluate", "--params", str(params_file), "--model", "dice-t"]) == 2
    assert "train it first" in capsys.readouterr().err
    missing = tmp_path / "nowhere.safetensors"
    assert dice_main(["evaluate", "--params", str(params_file), "--model", "dice-t",
                      "--checkpoint", str(missing)]) == 2
    assert f"--checkpoint {missing}: no such file" in capsys.readouterr().err
    damaged = random_model(tmp_path)
    damaged.write_bytes(damaged.read_bytes()[:200])
    assert dice_main(["evaluate", "--params", str(params_file), "--model", "dit-t",
                      "--checkpoint", str(damaged)]) == 2
    assert f"{damaged} is not a readable safetensors file" in capsys.readouterr().err


def test_weights_trained_on_other_latents_are_refused_naming_the_stage(tmp_path, data,
                                                                      capsys):
    """A run left by the old pixel-space default (3x32x32) against today's latents."""
    from dice_core.models.serialization import save_model
    weights = tmp_path / "old.safetensors"
    save_model(build_model("dit-t", in_channels=3, input_size=32, num_classes=3), weights)
    params_file = tmp_path / "params.yaml"
    params_file.write_text(yaml.safe_dump(eval_params(tmp_path, data, None)))
    assert dice_main(["evaluate", "--params", str(params_file), "--model", "dit-t",
                      "--checkpoint", str(weights)]) == 2
    assert "dvc repro train" in capsys.readouterr().err


def test_training_logs_the_evaluation_metrics_at_their_steps(tmp_path, data, reference,
                                                             mlflow_server):
    raw = eval_params(tmp_path, data, mlflow_server.uri)
    raw["train"].update(steps=4, eval_every=2, ckpt_every=2)
    summary = train_model(TrainingJob.of(Params.model_validate(raw)), "dit-t")
    client = MlflowClient(mlflow_server.uri)
    steps = [m.step for m in client.get_metric_history(summary["run_id"], "eval/fd_effnet")]
    assert steps == [2, 4]
    assert (tmp_path / "runs" / "dit-t" / "eval" / "step-0000004" / "samples.npz").is_file()
    assert ema_weights_path(tmp_path / "runs" / "dit-t").is_file()
    assert load_model(ema_weights_path(tmp_path / "runs" / "dit-t")).preset_name == "dit-t"


def test_the_report_has_both_tables_the_figures_and_reaches_the_parent_run(
        tmp_path, data, reference, mlflow_server):
    from dice_core.training.runner import train_models
    raw = eval_params(tmp_path, data, mlflow_server.uri)
    raw["train"].update(models=["dice-t", "dit-t"], steps=4, eval_every=2, ckpt_every=2)
    with_runs(raw)
    raw["report"].update(output=str(tmp_path / "report"), ddpm_steps=4, timed_steps=2)
    params_file = tmp_path / "params.yaml"
    params_file.write_text(yaml.safe_dump(raw))
    job = TrainingJob.of(Params.model_validate(raw))
    [first, _] = train_models(job, job.train.run_specs())
    assert dice_main(["report", "--params", str(params_file)]) == 0

    report = (tmp_path / "report" / "report.md").read_text()
    assert "## Table 1" in report and "## Table 2" in report and "## Emissions" in report
    assert "| dice-t |" in report and "| dit-t |" in report and "fd_effnet" in report
    for figure in ("fig11_fd_vs_step", "fig12_is_vs_step", "fig13_throughput_vs_fd"):
        assert (tmp_path / "report" / f"{figure}.png").stat().st_size > 1000
    table1 = json.loads((tmp_path / "report" / "table1.json").read_text())
    assert table1["dit-t"]["num_samples"] == 6
    table2 = json.loads((tmp_path / "report" / "table2.json").read_text())
    assert table2["dice-t"]["trainable_params"] > 0 and table2["dit-t"]["throughput"]
    curves = (tmp_path / "report" / "curves.csv").read_text().splitlines()
    assert curves[0] == "run,model,seed,step,fd_effnet,is_effnet" and len(curves) == 5

    client = MlflowClient(mlflow_server.uri)
    parent_id = client.get_run(first["run_id"]).data.tags["mlflow.parentRunId"]
    parent = client.get_run(parent_id)
    assert "dit-t/fd_effnet" in parent.data.metrics and "dice-t/is_effnet" in parent.data.metrics
    assert {a.path for a in client.list_artifacts(parent_id, "report")} >= {
        "report/report.md", "report/fig13_throughput_vs_fd.png"}


def test_the_classifier_learns_the_real_classes_and_scores_the_samples(tmp_path, data,
                                                                       reference,
                                                                       mlflow_server):
    from dice_core.data import Shapes
    from dice_core.evaluation.classifier import class_accuracy, load_classifier, predict
    raw = eval_params(tmp_path, data, mlflow_server.uri)
    raw["evaluate"]["classifier"] = raw["classifier"]["output"]
    params_file = tmp_path / "params.yaml"
    params_file.write_text(yaml.safe_dump(raw))
    # trained on a larger set of the same classes than the diffusion data
    larger = tiny_latents(tmp_path, num_classes=3, per_class=40, image_size=16, resolution=16,
                          shard_size=40).parent / "prepared"
    classifier_params = tmp_path / "classifier-params.yaml"
    classifier_params.write_text(yaml.safe_dump({**raw, "prepare": {**raw["prepare"],
                                                                    "output": str(larger)}}))
    assert dice_main(["classifier", "--params", str(classifier_params)]) == 0
    meta = json.loads((tmp_path / "classifier.json").read_text())
    assert meta["heldout_accuracy"] >= 0.8 and meta["num_classes"] == 3
    classifier, _ = load_classifier(tmp_path / "classifier.safetensors", "cpu")
    # items 120 to 179 of the same generator: it was trained on items 0 to 119
    unseen = list(Shapes(num_classes=3, image_size=16, count_per_class={"train": 60},
                         seed=0).items("train"))[120:]
    images = np.stack([item.payload for item in unseen])
    labels = np.array([item.label for item in unseen])
    assert class_accuracy(classifier, images, labels) >= 0.8

    train_model(TrainingJob.of(Params.model_validate(raw)), "dit-t")
    assert dice_main(["evaluate", "--params", str(params_file), "--model", "dit-t"]) == 0
    folder = tmp_path / "eval" / "dit-t"
    metrics = json.loads((folder / "metrics.json").read_text())
    with np.load(folder / "samples.npz") as samples, np.load(folder / "features.npz") as scored:
        predicted = predict(classifier, samples["arr_0"])
        np.testing.assert_array_equal(scored["predicted"], predicted)
        assert metrics["class_accuracy"] == np.mean(predicted == samples["arr_1"])
    assert metrics["classifier_real_accuracy"] == meta["heldout_accuracy"]
