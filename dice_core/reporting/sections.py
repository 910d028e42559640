"""The report's sections beyond the paper's tables: the ranking with intervals and the
answer to the paper's question, the autoencoder, the departures from the paper's protocol and
each stage's wall time."""
from __future__ import annotations

import json
from pathlib import Path

from dice_core.config import EvaluateParams, Params, TrainParams
from dice_core.metrics import scale_label

from .intervals import Interval, rank
from .paired import Claim, Difference, chance_verdicts, claim_verdict
from .tables import markdown, number


def interval_text(interval: Interval, digits: int) -> str:
    return (f"{interval.value:.{digits}f} "
            f"[{interval.low:.{digits}f}, {interval.high:.{digits}f}]")


def ranking_section(intervals: dict[str, dict[str, Interval]], labels: dict[str, str]) -> str:
    """One row per metric: the models best first, each with its own 95% interval. The
    paper's claims are answered by the paired differences (``claims_section``), not here:
    marginal intervals ignore that the models share their samples' labels and noise."""
    if len(intervals) < 2:
        return "A ranking needs at least two evaluated models in train.models."
    rows = []
    for metric, label in labels.items():
        per_model = {m: iv[metric] for m, iv in intervals.items() if metric in iv}
        if len(per_model) < 2:
            continue
        digits = 2 if metric in ("fd", "is") else 3
        rows.append([label, " > ".join(f"{m} {interval_text(per_model[m], digits)}"
                                       for m in rank(per_model, metric))])
    return markdown(["metric (better first)", "ranking, value [95% interval]"], rows)


def claims_section(claims: list[Claim], differences: dict[tuple[str, str], Difference],
                   labels: dict[str, str], seeds: list[int]) -> str:
    """One row per claim and metric: claimed minus baseline, each training seed's own
    difference, the 95% interval of the difference and the verdict."""
    if not claims:
        return ("No claim can be tested: train.models needs a DICE model and a baseline or "
                "an ablation (dice-t-onehand, dice-t-residual).")
    rows = []
    for claim in claims:
        for metric, label in labels.items():
            found = differences.get((claim.text, metric))
            if found is None:
                continue
            digits = 2 if metric in ("fd", "is") else 3
            iv = found.interval
            rows.append([claim.text, f"{claim.claimed} - {claim.baseline}", label,
                         f"{iv.value:+.{digits}f}",
                         ", ".join(f"{d:+.{digits}f}" for d in found.per_seed),
                         f"[{iv.low:+.{digits}f}, {iv.high:+.{digits}f}]",
                         claim_verdict(iv, metric)])
    methods = sorted({d.method for d in differences.values()})
    table = markdown(["claim", "difference of", "metric", "difference", "per seed",
                      "95% interval", "verdict"], rows)
    return (f"Training seeds: {', '.join(map(str, seeds))} ({len(seeds)}); per seed: that "
            f"seed's runs of the two models.\n\n{table}\n\n"
            "Lower FD and higher IS, precision, recall and class accuracy are "
            f"better. Intervals: {'; '.join(methods)}. {len(rows)} comparisons at 95% give "
            f"about {chance_verdicts(len(rows)):.1f} verdicts other than 'cannot be told "
            "apart' by chance alone, even where no model is better.")


def autoencoder_section(meta: dict | None, reconstruction_accuracy: float | None,
                        real_accuracy: float | None) -> str:
    if meta is None:
        return "The latents were not made by an autoencoder of this project."
    source = meta["source"].get("name") if isinstance(meta["source"], dict) else meta["source"]
    lines = [f"- {meta['parameters']:,} parameters, trained {meta['train_seconds']:.0f} s on "
             f"{meta['train_images']:,} {source} images "
             f"({meta['resolution']}x{meta['resolution']}x{meta['image_channels']})",
             f"- reconstruction MSE on {meta['heldout_images']} held-out images: "
             f"{meta['reconstruction_mse']:.4f} (pixels in [-1, 1])",
             f"- scale factor {meta['scale_factor']:.4f} (1 / std of its latents)"]
    if reconstruction_accuracy is not None and real_accuracy:
        lines.append(f"- classifier accuracy on the classifier's held-out real images "
                     f"{real_accuracy:.3f}, on their reconstructions "
                     f"{reconstruction_accuracy:.3f} (ratio "
                     f"{reconstruction_accuracy / real_accuracy:.3f})")
    return "\n".join(lines)


def protocol_notes(train: TrainParams, evaluate: EvaluateParams, paper: Params,
                   manifest: dict) -> str:
    """One line per place where this run departs from the paper's protocol; ``paper`` is the
    ImageNet profile laid over params.yaml, the one home of the paper's values."""
    notes = [note for note in (
        data_note(paper, manifest),
        departure(train, paper.train, ("steps", "global_batch", "lr"), training_text),
        departure(train, paper.train, ("ema_decay", "ema_warmup"), ema_text),
        departure(evaluate, paper.evaluate, ("samples", "sampler", "steps", "cfg_scales",
                                             "guidance_channels"), evaluation_text))
        if note]
    during = evaluate.for_training()
    notes.append(f"evaluations inside training every {train.eval_every} steps: "
                 f"{during.samples} samples, {during.sampler} {during.steps} steps, "
                 f"{guidance_text(during)}")
    if evaluate.feature_network != paper.evaluate.feature_network:
        notes.append(f"features: {evaluate.feature_network} (offline), so FD/IS are "
                     "not FID/IS and cannot be compared with the paper's numbers")
    return "\n".join(f"- {note}" for note in notes)


def data_note(paper: Params, manifest: dict) -> str | None:
    source = manifest["source"]
    source = source.get("name") if isinstance(source, dict) else source
    if source == paper.prepare.source:
        return None
    return (f"data: {source} at {manifest['resolution']} px, latents "
            f"{tuple(manifest['latent_shape'])} from {manifest['encoder']} (the paper: "
            f"{paper.prepare.source} {paper.prepare.resolution} through the SD-VAE)")


def departure(ours, theirs, fields: tuple[str, ...], describe) -> str | None:
    """``describe(ours, theirs)`` where this run's section differs from the paper's in
    ``fields``, else None."""
    if all(getattr(ours, name) == getattr(theirs, name) for name in fields):
        return None
    return describe(ours, theirs)


def training_text(train, theirs) -> str:
    return (f"training: {train.steps} steps of {train.global_batch} at lr {train.lr:g} "
            f"(the paper: {theirs.steps} of {theirs.global_batch} at lr {theirs.lr:g})")


def ema_text(train, theirs) -> str:
    warmup = ", warmed up as min(decay, (1+n)/(10+n))" if train.ema_warmup else ""
    return (f"EMA decay {train.ema_decay}{warmup} (the paper: {theirs.ema_decay}, "
            f"{'with' if theirs.ema_warmup else 'no'} warm-up)")


def evaluation_text(ours, theirs) -> str:
    text = (f"final evaluation: {ours.samples} samples, {ours.sampler} {ours.steps} steps "
            f"(the paper: {theirs.samples}, {theirs.sampler} {theirs.steps})")
    if guidance_text(ours) != guidance_text(theirs):
        text += f"; {guidance_text(ours)} (the paper: {guidance_text(theirs)})"
    return text


def guidance_text(evaluate) -> str:
    """The guidance scales (DiT's s, 1 = none), headline first: "cfg 1 and 3 (3 channels)"."""
    scales = " and ".join(scale_label(scale) for scale in evaluate.cfg_scales)
    channels = f" ({evaluate.guidance_channels} channels)" if evaluate.guidance_channels else ""
    return f"cfg {scales}{channels}"


def read_stage_times(path: Path) -> dict[str, dict]:
    """The latest record of each stage (a stage that DVC skipped keeps its last time)."""
    latest: dict[str, dict] = {}
    if path.is_file():
        for line in path.read_text().splitlines():
            if line.strip():
                record = json.loads(line)
                latest[record["stage"]] = record
    return latest


def stage_times_section(times: dict[str, dict]) -> str:
    if not times:
        return "No stage times recorded."
    rows = [[stage, number(r["seconds"] / 60, 1), r["finished"]] for stage, r in times.items()]
    total = sum(r["seconds"] for r in times.values())
    rows.append(["total", number(total / 60, 1), ""])
    return markdown(["stage", "minutes", "finished"], rows)
