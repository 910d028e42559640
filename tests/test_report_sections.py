"""The report's ranking with 95% intervals, its notes on the
protocol and its stage times."""
import json
from pathlib import Path

import numpy as np
import pytest

from dice_core.config import load_params
from dice_core.metrics.adm import frechet_distance_to_features, inception_score, statistics
from dice_core.reporting.intervals import (
    Interval,
    percentile_interval,
    rank,
    resampled_fds,
    sample_intervals,
)
from dice_core.reporting.sections import (
    protocol_notes,
    ranking_section,
    read_stage_times,
    stage_times_section,
)
from pipelines.report import paper_params

DIM = 8


def features_like(rng, count, shift):
    pool = rng.normal(size=(count, DIM)) + shift
    logits = rng.normal(size=(count, 5)) * 3
    labels = np.arange(count) % 5
    return {"pool": pool, "logits": logits, "labels": labels}


def intervals_of(per_sample, reference, correct_fraction, rng):
    mu, sigma = statistics(reference)
    predicted = per_sample["labels"].copy()
    wrong = rng.random(len(predicted)) > correct_fraction
    predicted[wrong] = (predicted[wrong] + 1) % 5
    per_sample = {**per_sample, "predicted": predicted}
    point = {"fd": frechet_distance_to_features(mu, sigma, per_sample["pool"]),
             "is": inception_score(per_sample["logits"]),
             "class_accuracy": float((predicted == per_sample["labels"]).mean()),
             "precision": 0.5, "recall": 0.5}
    return sample_intervals(per_sample, mu, sigma, reference, point, resamples=50, seed=0,
                            subsets=5)


@pytest.fixture(scope="module")
def three_models():
    rng = np.random.default_rng(0)
    reference = rng.normal(size=(400, DIM))
    return {"dice-t": intervals_of(features_like(rng, 200, 0.0), reference, 0.9, rng),
            "dit-t": intervals_of(features_like(rng, 200, 1.5), reference, 0.3, rng),
            "dimr-t": intervals_of(features_like(rng, 200, 1.0), reference, 0.35, rng)}


def test_an_interval_is_the_2_5_and_97_5_percentiles_moved_by_the_draws_median_bias():
    draws = np.arange(101.0)          # percentiles 2.5 and 97.5, median 50
    draws[-1] = 1100.0                # an outlier moves the mean (59.9), not these
    assert percentile_interval(50.0, draws) == Interval(50.0, 2.5, 97.5)
    assert percentile_interval(40.0, draws) == Interval(40.0, -7.5, 87.5)
    assert percentile_interval(40.0, draws[::-1]) == Interval(40.0, -7.5, 87.5)


def accuracy_intervals(correct, resamples=1000):
    """The intervals of a model whose samples the classifier got ``correct`` right."""
    count = len(correct)
    labels = np.arange(count) % 5
    per_sample = {"pool": np.random.default_rng(1).normal(size=(count, DIM)),
                  "labels": labels, "predicted": np.where(correct, labels, (labels + 1) % 5)}
    point = {"fd": 1.0, "class_accuracy": float(np.mean(correct))}
    return sample_intervals(per_sample, np.zeros(DIM), np.eye(DIM), None, point,
                            resamples=resamples, seed=0)


def test_class_accuracy_interval_has_the_binomial_width_around_the_accuracy():
    """300 of 400 right: the bootstrap's spread is the binomial sqrt(p (1 - p) / n), so the
    95% interval is about 2 x 1.96 x 0.0217 = 0.085 wide, centred on 0.75."""
    correct = np.arange(400) % 4 != 0
    interval = accuracy_intervals(correct)["class_accuracy"]
    width = 2 * 1.96 * np.sqrt(0.75 * 0.25 / 400)
    assert interval.value == 0.75
    assert interval.high - interval.low == pytest.approx(width, rel=0.15)
    assert (interval.low + interval.high) / 2 == pytest.approx(0.75, abs=0.01)


def test_all_right_or_all_wrong_leaves_no_room_for_doubt():
    assert accuracy_intervals(np.ones(50, bool), 20)["class_accuracy"] == Interval(1, 1, 1)
    assert accuracy_intervals(np.zeros(50, bool), 20)["class_accuracy"] == Interval(0, 0, 0)


def test_a_model_clearly_closer_to_the_data_ranks_first(three_models):
    fd = {m: iv["fd"] for m, iv in three_models.items()}
    assert rank(fd, "fd") == ["dice-t", "dimr-t", "dit-t"]
    accuracy = {m: iv["class_accuracy"] for m, iv in three_models.items()}
    assert rank(accuracy, "class_accuracy")[0] == "dice-t"


def test_resampled_fds_from_the_shared_products_equal_the_exact_route_draw_by_draw():
    rng = np.random.default_rng(3)
    reference = rng.normal(size=(300, 90)) @ rng.normal(size=(90, 90))
    mu, sigma = statistics(reference)
    pool = rng.normal(size=(60, 90)) * 2 + 1       # fewer samples than dimensions
    draws = [rng.integers(0, 60, 60) for _ in range(5)] + [np.arange(60)]
    expected = [frechet_distance_to_features(mu, sigma, pool[d], "exact") for d in draws]
    np.testing.assert_allclose(resampled_fds(mu, sigma, pool, draws), expected, rtol=1e-9)
    wide = rng.normal(size=(120, 90))               # more samples than dimensions: ADM's route
    np.testing.assert_allclose(resampled_fds(mu, sigma, wide, draws[:2]),
                               [frechet_distance_to_features(mu, sigma, wide[d], "exact")
                                for d in draws[:2]], rtol=1e-12)


def test_the_ranking_section_lists_the_models_best_first_with_their_intervals(three_models):
    text = ranking_section(three_models, {"fd": "FD", "class_accuracy": "class accuracy"})
    fd_row = next(line for line in text.splitlines() if line.startswith("| FD"))
    assert fd_row.index("dice-t") < fd_row.index("dimr-t") < fd_row.index("dit-t")
    fd = three_models["dice-t"]["fd"]
    assert f"dice-t {fd.value:.2f} [{fd.low:.2f}, {fd.high:.2f}]" in fd_row


def test_the_protocol_notes_name_every_departure_of_the_default_profile():
    params = load_params()
    manifest = {"source": "fashion-mnist", "resolution": 32, "latent_shape": [4, 8, 8],
                "encoder": "vae:autoencoder"}
    notes = protocol_notes(params.train, params.evaluate, paper_params("params.yaml"),
                           manifest)
    assert f"{params.train.steps} steps of {params.train.global_batch}" in notes
    assert "(the paper: 35000 of 128 at lr 0.0001)" in notes     # from profiles/imagenet.yaml
    assert "EMA decay" in notes and "warmed up" in notes and "(the paper: 0.9999, no" in notes
    assert f"ddpm {params.evaluate.steps} steps (the paper: 500, ddpm 250)" in notes
    assert "inside training" in notes and "effnet" in notes
    assert "(the paper: imagenet 256 through the SD-VAE)" in notes


def test_stage_times_keep_the_latest_record_of_each_stage(tmp_path):
    path = tmp_path / "times.jsonl"
    records = [{"stage": "prepare", "seconds": 60.0, "finished": "a"},
               {"stage": "train@dit-t", "seconds": 120.0, "finished": "b"},
               {"stage": "prepare", "seconds": 30.0, "finished": "c"}]
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    times = read_stage_times(path)
    assert times["prepare"]["seconds"] == 30.0
    table = stage_times_section(times)
    assert "| total | 2.5 |" in table


def test_a_finished_stage_records_its_wall_time_and_a_failed_one_does_not(tmp_path,
                                                                         monkeypatch):
    import yaml

    from pipelines import stage_times
    from pipelines.cli import main
    monkeypatch.setattr(stage_times, "STAGE_TIMES", tmp_path / "times.jsonl")
    assert main(["prepare", "--params", str(tmp_path / "missing.yaml")]) == 2
    assert not (tmp_path / "times.jsonl").exists()
    raw = yaml.safe_load((Path(__file__).resolve().parents[1] / "params.yaml").read_text())
    raw["prepare"].update(source="shapes", resolution=16, limit_per_class=None,
                          output=str(tmp_path / "prepared"),
                          shapes={"num_classes": 2, "image_size": 16,
                                  "count_per_class": {"train": 2}, "seed": 0})
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw))
    assert main(["prepare", "--params", str(tmp_path / "params.yaml")]) == 0
    (record,) = read_stage_times(tmp_path / "times.jsonl").values()
    assert record["stage"] == "prepare" and record["seconds"] >= 0


def test_too_few_samples_for_precision_recall_subsets_leave_those_intervals_out():
    import numpy as np

    from dice_core.reporting.intervals import sample_intervals
    rng = np.random.default_rng(0)
    pool, reference = rng.standard_normal((4, 8)), rng.standard_normal((20, 8))
    intervals = sample_intervals({"pool": pool}, reference.mean(0), np.cov(reference.T),
                                 reference, {"fd": 1.0, "precision": 0.5, "recall": 0.5},
                                 resamples=10, seed=0)
    assert "fd" in intervals and "precision" not in intervals and "recall" not in intervals


def test_a_stage_time_is_recorded_under_its_dvc_stage_name_training_seed_included():
    from argparse import Namespace

    from pipelines.stage_times import stage_name
    assert stage_name(Namespace(command="static")) == "static"
    assert stage_name(Namespace(command="train", model=["dice-t"], training_seeds=None)) == \
        "train@dice-t"
    assert stage_name(Namespace(command="train", model=["dice-t"], training_seeds=[1])) == \
        "train@dice-t-s1"
    assert stage_name(Namespace(command="evaluate", model="dit-t", training_seed=42)) == \
        "evaluate@dit-t"
    assert stage_name(Namespace(command="evaluate", model="dit-t", training_seed=2)) == \
        "evaluate@dit-t-s2"
