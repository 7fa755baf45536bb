"""How the cost of the Jacobian spectra grows with N, L, d and k.

Measures a small grid around a base point, one parameter at a time:

- ``top_singular`` on conv basic blocks (C channels at s x s, d = C s^2),
  varying the number of inputs N, of blocks L, the dimension d (through s)
  and the number of triplets k;
- ``residual_jacobians`` on FC blocks (closed form and vmap autodiff),
  varying N, L and the width d.

Prints a markdown table (with the log-log slope of each sweep) and saves a
log-log plot to ``benchmarks/scaling.png``. Each point is the fastest of
``--repeats`` runs after a warm-up; only the growth is of interest. Run
``python benchmarks/bench_scaling.py`` (25 s on 2 quiet CPU
cores) or with ``--quick``.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import matplotlib
import matplotlib.ticker
import numpy as np
import torch

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from blocks import conv_branch, fc_branch  # noqa: E402

from resalign.jacobians import residual_jacobians  # noqa: E402
from resalign.spectra import top_singular  # noqa: E402

OUT = Path(__file__).resolve().parent / "scaling.png"


@dataclass(frozen=True)
class Point:
    """One configuration: N inputs, L blocks, width/channels, side, k."""

    n: int
    blocks: int
    width: int
    side: int = 1
    k: int = 10

    @property
    def d(self) -> int:
        return self.width * self.side**2


@dataclass
class Sweep:
    """Timings of one method along one parameter."""

    method: str
    param: str
    values: list[int] = field(default_factory=list)
    seconds: list[float] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def slope(self) -> float:
        x, y = np.log(self.values), np.log(self.seconds)
        return float(np.polyfit(x, y, 1)[0])


def run_top_singular(p: Point) -> tuple[float, str]:
    """Seconds for the top-k triplets of L conv blocks at N inputs each."""
    blocks = [conv_branch(p.width, seed=i) for i in range(p.blocks)]
    gen = torch.Generator().manual_seed(0)
    h = torch.randn(p.n, p.width, p.side, p.side, generator=gen).relu()
    dims = []
    start = time.perf_counter()
    for block in blocks:
        *_, info = top_singular(block, h, p.k, return_info=True)
        dims.append(info["dim"])
    return time.perf_counter() - start, f"Krylov dim {max(dims)}"


def run_jacobians(method: str) -> Callable[[Point], tuple[float, str]]:
    def run(p: Point) -> tuple[float, str]:
        blocks = [fc_branch(p.width, seed=i) for i in range(p.blocks)]
        h = torch.randn(p.n, p.width, generator=torch.Generator().manual_seed(0))
        start = time.perf_counter()
        for block in blocks:
            residual_jacobians(block, h.relu(), method=method)
        return time.perf_counter() - start, ""

    return run


@dataclass(frozen=True)
class Plan:
    """Base points and sweep values of one grid."""

    conv: Point
    fc: Point
    n: tuple[int, ...]
    blocks: tuple[int, ...]
    conv_side: tuple[int, ...]
    fc_width: tuple[int, ...]
    k: tuple[int, ...]
    fc_n: tuple[int, ...]


FULL = Plan(
    conv=Point(n=4, blocks=1, width=16, side=12, k=10),
    fc=Point(n=100, blocks=4, width=256),
    n=(1, 2, 4, 8),
    blocks=(1, 2, 4, 8),
    conv_side=(8, 12, 16, 24),
    fc_width=(64, 128, 256, 512),
    k=(5, 10, 20, 40),
    fc_n=(25, 50, 100, 200),
)
QUICK = Plan(
    conv=Point(n=2, blocks=1, width=8, side=8, k=5),
    fc=Point(n=50, blocks=2, width=64),
    n=(1, 2, 4),
    blocks=(1, 2, 4),
    conv_side=(8, 10, 12),
    fc_width=(32, 64, 128),
    k=(3, 6, 12),
    fc_n=(25, 50, 100),
)


def sweep(
    method: str,
    param: str,
    base: Point,
    field_name: str,
    values: tuple[int, ...],
    run: Callable[[Point], tuple[float, str]],
    repeats: int,
) -> Sweep:
    """Time ``run`` along one parameter, keeping the fastest of ``repeats``."""
    out = Sweep(method, param)
    for value in values:
        runs = [run(replace(base, **{field_name: value})) for _ in range(repeats)]
        seconds, note = min(runs)
        shown = replace(base, **{field_name: value}).d if param == "d" else value
        out.values.append(shown)
        out.seconds.append(seconds)
        out.notes.append(note)
        print(f"  {method:<28} {param}={shown:<6} {seconds:8.3f} s {note}", flush=True)
    return out


def measure(plan: Plan, repeats: int) -> list[Sweep]:
    ts = "top_singular (conv)"
    closed = run_jacobians("closed")
    autodiff = run_jacobians("autodiff")
    jobs = [
        (ts, "N", plan.conv, "n", plan.n, run_top_singular),
        (ts, "L", plan.conv, "blocks", plan.blocks, run_top_singular),
        (ts, "d", plan.conv, "side", plan.conv_side, run_top_singular),
        (ts, "k", plan.conv, "k", plan.k, run_top_singular),
    ]
    for name, run in (
        ("jacobians closed (FC)", closed),
        ("jacobians autodiff (FC)", autodiff),
    ):
        jobs += [
            (name, "N", plan.fc, "n", plan.fc_n, run),
            (name, "L", plan.fc, "blocks", plan.blocks, run),
            (name, "d", plan.fc, "width", plan.fc_width, run),
        ]
    return [sweep(*job, repeats=repeats) for job in jobs]


def table(sweeps: list[Sweep]) -> str:
    lines = [
        "| method | sweep | values | seconds | log-log slope | notes |",
        "|---|---|---|---|---|---|",
    ]
    for s in sweeps:
        values = ", ".join(str(v) for v in s.values)
        secs = ", ".join(f"{t:.3g}" for t in s.seconds)
        notes = "; ".join(n for n in s.notes if n)
        cells = [s.method, s.param, values, secs, f"{s.slope():.2f}", notes]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _short(value: int) -> str:
    """Compact tick label: 9216 -> '9k', 2304 -> '2.25k'."""
    return f"{value / 1024:.3g}k" if value >= 1024 else str(value)


def plot(sweeps: list[Sweep], plan: Plan, path: Path) -> None:
    """One log-log panel per swept parameter, slopes in the legends."""
    params = ["N", "L", "d", "k"]
    fig, axes = plt.subplots(1, 4, figsize=(16, 4.2), constrained_layout=True)
    for ax, param in zip(axes, params, strict=True):
        ticks: set[int] = set()
        for s in (s for s in sweeps if s.param == param):
            label = f"{s.method}, slope {s.slope():.2f}"
            ax.loglog(s.values, s.seconds, "o-", label=label)
            ticks.update(s.values)
        ax.set_xticks(sorted(ticks), [_short(v) for v in sorted(ticks)])
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.set_xlabel(param)
        ax.set_ylabel("seconds")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
    c, f = plan.conv, plan.fc
    fig.suptitle(
        f"Cost growth around conv N={c.n}, L={c.blocks}, d={c.d}, k={c.k} "
        f"(top_singular) and FC N={f.n}, L={f.blocks}, d={f.d} (Jacobians); "
        f"{torch.get_num_threads()} thread(s)",
        fontsize=10,
    )
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smaller grid")
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument("--out", type=Path, default=OUT, help="plot path")
    parser.add_argument(
        "--repeats", type=int, default=2, help="runs per point, fastest kept"
    )
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    plan = QUICK if args.quick else FULL
    print(
        f"torch {torch.__version__}, torch.get_num_threads() = "
        f"{torch.get_num_threads()}, load average {os.getloadavg()[0]:.1f}, "
        f"fastest of {args.repeats} runs per point"
    )
    with warnings.catch_warnings():  # warm-up: first-call setup costs
        warnings.simplefilter("ignore")
        run_top_singular(replace(plan.conv, n=1, k=2))
        run_jacobians("autodiff")(replace(plan.fc, n=2, blocks=1))
    sweeps = measure(plan, args.repeats)
    print()
    print(table(sweeps))
    plot(sweeps, plan, args.out)
    print(f"\nplot saved to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
