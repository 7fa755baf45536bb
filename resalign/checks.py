"""Asserted claims: a metric, a threshold, and a verdict.

Every chapter ends its measurements with a call to :func:`verify`: it prints
each metric beside its threshold and raises ``AssertionError`` when any claim
fails, so that nbval (and papermill reruns) fail when RA is not reproduced.
When the environment variable ``RESALIGN_METRICS`` names a file, the checks are
also written there as JSON (atomically), which is how reruns collect them.
"""

from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass
from pathlib import Path

__all__ = ["Check", "verify"]

_OPS = {
    "<": lambda v, t: v < t,
    "<=": lambda v, t: v <= t,
    ">": lambda v, t: v > t,
    ">=": lambda v, t: v >= t,
}


@dataclass(frozen=True)
class Check:
    """One asserted claim: ``value op threshold``.

    Attributes
    ----------
    claim : str
        What is claimed, in words (e.g. "RA1: paths are straight").
    metric : str
        The metric's name (e.g. "median line-shape score").
    value : float
        The measured value.
    op : str
        One of ``<``, ``<=``, ``>``, ``>=``.
    threshold : float
        The bound the value must respect.
    known_failure : bool, default False
        The claim is known not to reproduce at the chapter's settings (its
        text says so). It is still measured and printed against the same
        threshold, but does not fail the chapter; if it passes, :func:`verify`
        says that the chapter's text needs updating.
    """

    claim: str
    metric: str
    value: float
    op: str
    threshold: float
    known_failure: bool = False

    def __post_init__(self) -> None:
        if self.op not in _OPS:
            raise ValueError(f"unknown op {self.op!r}; valid: {', '.join(_OPS)}")
        object.__setattr__(self, "value", float(self.value))

    @property
    def passed(self) -> bool:
        """Whether the value respects the threshold (NaN never does)."""
        return not math.isnan(self.value) and _OPS[self.op](self.value, self.threshold)


def _fmt(x: float) -> str:
    return f"{x:.3g}" if abs(x) < 1e4 else f"{x:.3e}"


def verify(checks: list[Check], *, name: str = "") -> None:
    """Print every check as a table row and assert that all of them pass.

    Parameters
    ----------
    checks : list of Check
        The chapter's claims.
    name : str, optional
        The chapter's name, recorded in the JSON written to
        ``$RESALIGN_METRICS``.

    Raises
    ------
    AssertionError
        Naming every failed claim with its value and threshold.
    """
    width = max(len(c.claim) for c in checks)
    print(f"{'claim':<{width}} | metric | value | needs | ok")
    for c in checks:
        mark = "yes" if c.passed else "NO"
        if c.known_failure:
            mark = (
                "yes (listed as not reproduced: update the text)"
                if c.passed
                else ("no (known: not reproduced at these settings)")
            )
        row = f"{c.metric} | {_fmt(c.value)} | {c.op} {_fmt(c.threshold)} | {mark}"
        print(f"{c.claim:<{width}} | {row}")
    out = os.environ.get("RESALIGN_METRICS")
    if out:
        _write_json(Path(out), name, checks)
    failed = [c for c in checks if not c.passed and not c.known_failure]
    if failed:
        lines = [
            f"{c.claim}: {c.metric} = {_fmt(c.value)}, needs {c.op} {_fmt(c.threshold)}"
            for c in failed
        ]
        raise AssertionError("not reproduced:\n  " + "\n  ".join(lines))


def _write_json(path: Path, name: str, checks: list[Check]) -> None:
    from .store import atomic_write_json

    rows = [asdict(c) | {"passed": c.passed} for c in checks]
    atomic_write_json(path, {"chapter": name, "checks": rows})
