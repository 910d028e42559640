"""Tables 1 and 2 of the paper as markdown, and emissions, from collected results."""
from __future__ import annotations

from dice_core.metrics import cfg_suffix, metric_names, scale_label

from .collect import ModelResults


def markdown(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows])


def number(value, digits: int = 2) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def scaled(value: float) -> str:
    """A count in G or M with two decimals: tiny models' multiply-adds are a few million,
    the paper's over a hundred billion."""
    for factor, unit in ((1e9, "G"), (1e6, "M")):
        if value >= factor:
            return f"{value / factor:,.2f} {unit}"
    return f"{value:,.0f}"


def table1(results: list[ModelResults], network: str) -> str:
    """IS, FD, sFD, precision, recall and class accuracy at the final evaluation (names as the
    network allows), one row per classifier-free guidance scale (cfg: DiT's s, 1 = none)."""
    names = metric_names(network)
    keys = [names["is"], names["fd"], names["sfd"], names["precision"], names["recall"],
            "class_accuracy"]
    rows = []
    for r in results:
        headline, *_ = scales = r.final_scales()
        rows += [[r.run, scale_label(scale),
                  *(number(r.final.get(key + cfg_suffix(scale, headline))) for key in keys)]
                 for scale in scales]
    return markdown(["run", "cfg", *keys], rows)


def table2(results: list[ModelResults]) -> str:
    rows = [[r.model, f"{r.static['trainable_params']:,}",
             scaled(r.static["macs_without_attention"]), scaled(r.static["flops"]),
             number(r.static["throughput"]["samples_per_s"], 4)
             if r.static.get("throughput") else "-"] for r in results]
    return markdown(["model", "parameters", "multiply-adds (no attention)", "FLOPs",
                           "samples/s"], rows)


def emissions_table(results: list[ModelResults], totals: dict) -> str:
    keys = ["emissions/codecarbon_kwh", "emissions/codecarbon_kg", "emissions/device_hours",
            "emissions/paper_estimate_kg"]
    rows = [[r.run, *(number(r.emissions.get(k), 4) for k in keys)] for r in results]
    rows.append(["total", *(number(totals.get(k), 4) for k in keys)])
    return markdown(["run", "kWh (codecarbon)", "kg CO2 (codecarbon)", "device-hours",
                     "kg CO2 (paper's method)"], rows)
