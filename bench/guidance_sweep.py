"""Classifier-free guidance sweep: FD and class accuracy of each trained model's samples
against the guidance scale (DiT's s; 1 = none), every scale from the same starting noise and
labels. Run after `make repro` (it samples the EMA weights of train.models' runs through the
same Evaluator as the evaluate stage). Writes bench/results/guidance-sweep-cpu.{json,md,png}.

    python bench/guidance_sweep.py [--scales 1 2 3 4 5 6] [--samples 200] [--steps 25]
"""
from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from dice_core.benchmarking import write_record  # noqa: E402
from dice_core.config import load_params  # noqa: E402
from dice_core.devices import reuse_freed_cpu_memory  # noqa: E402
from dice_core.durable import replace_atomically  # noqa: E402
from dice_core.evaluation.evaluate import evaluate_model  # noqa: E402
from dice_core.metrics import cfg_suffix, metric_names  # noqa: E402
from dice_core.text_table import format_table  # noqa: E402
from pipelines.weights import checked_weights, load_sampler  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"


def sweep(model_name: str, params, scales: list[float], samples: int, steps: int) -> list[dict]:
    weights, manifest = checked_weights(None, model_name, params)
    model = load_sampler(weights, "cpu")
    config = params.evaluate.model_copy(update={"cfg_scales": scales, "samples": samples,
                                                "steps": steps, "device": "cpu"})
    fd = metric_names(config.feature_network)["fd"]
    with tempfile.TemporaryDirectory() as scratch:
        metrics = evaluate_model(model, manifest, config, params.seed, scratch, progress=True)
    return [{"model": model_name, "cfg": scale, "samples": samples, "steps": steps,
             "fd": metrics[fd + cfg_suffix(scale, scales[0])],
             "class_accuracy": metrics.get("class_accuracy" + cfg_suffix(scale, scales[0]))}
            for scale in scales]


def plot(rows: list[dict], fd_name: str, path: Path) -> None:
    figure, (fd_axis, accuracy_axis) = plt.subplots(1, 2, figsize=(9, 3.6))
    for model in dict.fromkeys(r["model"] for r in rows):
        mine = [r for r in rows if r["model"] == model]
        scales = [r["cfg"] for r in mine]
        fd_axis.plot(scales, [r["fd"] for r in mine], marker="o", label=model)
        accuracy_axis.plot(scales, [r["class_accuracy"] for r in mine], marker="o", label=model)
    fd_axis.set(xlabel="guidance scale s", ylabel=fd_name, title="FD (lower is better)")
    accuracy_axis.set(xlabel="guidance scale s", ylabel="class accuracy",
                      title="class accuracy of the samples")
    accuracy_axis.legend()
    figure.tight_layout()
    replace_atomically(path, lambda f: figure.savefig(f, format="png", dpi=120))
    plt.close(figure)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scales", type=float, nargs="+", default=[1, 2, 3, 4, 5, 6])
    parser.add_argument("--samples", type=int, default=200)
    parser.add_argument("--steps", type=int, default=25)
    parser.add_argument("--params", default="params.yaml")
    args = parser.parse_args()
    reuse_freed_cpu_memory()
    params = load_params(args.params)
    rows = [row for model in params.train.models
            for row in sweep(model, params, args.scales, args.samples, args.steps)]
    fd_name = metric_names(params.evaluate.feature_network)["fd"]
    plot(rows, fd_name, RESULTS / "guidance-sweep-cpu.png")
    table = format_table(["model", "cfg", fd_name, "class accuracy"],
                         [[r["model"], f"{r['cfg']:g}", f"{r['fd']:.2f}",
                           "-" if r["class_accuracy"] is None else f"{r['class_accuracy']:.3f}"]
                          for r in rows])
    print(table)
    write_record(RESULTS, "guidance-sweep", f"guidance sweep: {args.samples} samples, "
                 f"{params.evaluate.sampler} {args.steps} steps, every scale from the same "
                 "noise (figure: guidance-sweep-cpu.png)", torch.device("cpu"), rows, table)


if __name__ == "__main__":
    main()
