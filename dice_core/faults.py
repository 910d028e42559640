"""Fault points for the fault-injection soak (tests/test_fault_soak.py).

``DICE_FAULT=<name>:<n>`` in the environment makes this process SIGKILL itself the n-th time it
reaches ``fault_point(name)``: as a crash, a power cut or the kernel's OOM killer stop it, with no
handler, finally block or flush running. Unset, a point costs one string comparison.

The points: ``step`` (before each optimiser step), ``checkpoint`` (twice per save: once
DeepSpeed's files are written, before the EMA's; once the folder has its final name, before
latest.json moves to it), ``evaluation`` (samples written, metrics not yet) and ``mlflow_send``
(after each batch of metrics the server took, before the tracker's journal drops it).
"""
from __future__ import annotations

import itertools
import os
import signal


def _armed(setting: str) -> tuple[str, int]:
    if not setting:
        return "", 0
    name, _, count = setting.rpartition(":")
    if not name or not count.isdigit() or int(count) < 1:
        raise ValueError(f"DICE_FAULT={setting!r}: expected <point>:<n>, n >= 1 (step:3)")
    return name, int(count)


ARMED, AT = _armed(os.environ.get("DICE_FAULT", ""))
_hits = itertools.count(1)


def fault_point(name: str) -> None:
    """SIGKILLs this process if DICE_FAULT is ``name:n`` and this is the n-th time here."""
    if name == ARMED and next(_hits) == AT:
        os.write(2, f"\nDICE_FAULT: SIGKILL at {name} #{AT}\n".encode())
        os.kill(os.getpid(), signal.SIGKILL)
