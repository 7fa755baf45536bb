"""The benchmark scripts run and print their ratios (small settings, seconds).

Their numbers are not checked here (timings belong in the README, not in
assertions); these tests only keep the scripts from breaking silently.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "benchmarks"


def _run(script: str, *args: str) -> str:
    done = subprocess.run(
        [sys.executable, str(BENCH / script), *args],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


@pytest.mark.parametrize(
    ("script", "args", "ratio"),
    [
        (
            "bench_training.py",
            ("--epochs", "1", "--rounds", "1"),
            r"ratio plain/resalign",
        ),
        (
            "bench_dynamics.py",
            ("--steps", "300", "--points", "3"),
            r"ratio with/without",
        ),
        ("bench_spectra.py", ("--quick",), r"\*\*[0-9.]+x\*\*"),
    ],
)
def test_benchmark_prints_its_ratio(script: str, args: tuple[str, ...], ratio: str):
    assert re.search(ratio + r".*[0-9]", _run(script, *args))


def test_scaling_benchmark_writes_its_plot(tmp_path: Path) -> None:
    out = tmp_path / "scaling.png"
    text = _run("bench_scaling.py", "--quick", "--repeats", "1", "--out", str(out))
    assert "top_singular" in text
    assert out.stat().st_size > 10_000
