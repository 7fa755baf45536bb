"""Figures of the book: each function takes a :class:`~resalign.measurement.Report`.

One style for the whole book is set by :func:`use_style` (called on import);
every function returns its ``matplotlib.figure.Figure`` and draws nothing else.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import matplotlib as mpl
import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib.figure import Figure

from .measurement import Report

__all__ = [
    "overview",
    "plot_alignment_grid",
    "plot_coupling",
    "plot_depth_scaling",
    "plot_inverse_sigma",
    "plot_line_scores",
    "plot_step_lengths",
    "plot_neural_collapse",
    "plot_spectra",
    "plot_trajectories",
    "project_2d",
    "use_style",
]

PALETTE = plt.get_cmap("tab10")
HIGHLIGHT = "#d62728"
MUTED = "#7f7f7f"


def use_style() -> None:
    """Set the book's figure style (dpi, fonts, grid) once."""
    mpl.rcParams.update(
        {
            "figure.dpi": 100,
            "savefig.dpi": 150,
            "font.size": 10,
            "axes.titlesize": 11,
            "axes.grid": True,
            "grid.alpha": 0.3,
            "axes.spines.top": False,
            "axes.spines.right": False,
            "image.cmap": "viridis",
            "figure.constrained_layout.use": True,
        }
    )


use_style()


def project_2d(hs: torch.Tensor, method: str = "pca", seed: int = 0) -> np.ndarray:
    """Project stacked representations ``(L+1, N, D)`` to ``(L+1, N, 2)``.

    ``"pca"`` uses the top two principal directions of all points; ``"random"``
    a Gaussian random projection, as in the authors' code. A line stays a line
    under either.
    """
    if method not in ("pca", "random"):
        raise ValueError(f"unknown projection {method!r}; valid: pca, random")
    pts = hs.reshape(-1, hs.shape[-1]).double()
    if method == "pca":
        centred = pts - pts.mean(0)
        _, _, vt = torch.linalg.svd(centred, full_matrices=False)
        basis = vt[:2].T
    else:
        gen = torch.Generator().manual_seed(seed)
        basis = torch.randn(hs.shape[-1], 2, generator=gen, dtype=torch.float64)
    return (pts @ basis).reshape(hs.shape[0], hs.shape[1], 2).numpy()


def _stacked(report: Report) -> torch.Tensor:
    return torch.stack([report.hs[i] for i in report.ra1["stage"]])


def plot_trajectories(
    report: Report, method: str = "pca", ax: plt.Axes | None = None, seed: int = 0
) -> Figure:
    """RA1: the path h_0 -> h_L of every input, projected to 2-D, coloured by class.

    A circle marks h_0 and a square h_L; dots mark the blocks in between.
    """
    fig, ax = _axes(ax, (5, 4.2))
    xy = project_2d(_stacked(report), method, seed)
    labels = report.labels.numpy()
    for n in range(xy.shape[1]):
        color = PALETTE(int(labels[n]) % 10)
        ax.plot(xy[:, n, 0], xy[:, n, 1], "-", color=color, lw=0.8, alpha=0.7)
        ax.plot(xy[1:-1, n, 0], xy[1:-1, n, 1], ".", color=color, ms=3)
        ax.plot(xy[0, n, 0], xy[0, n, 1], "o", color=color, ms=4, mfc="white")
        ax.plot(xy[-1, n, 0], xy[-1, n, 1], "s", color=color, ms=4)
    ax.set_xlabel(f"{method.upper()} 1")
    ax.set_ylabel(f"{method.upper()} 2")
    ax.set_title("RA1: trajectories of the representations")
    _class_legend(ax, labels)
    return fig


def plot_alignment_grid(report: Report, K: int | None = None, top: int = 8) -> Figure:
    """RA2: panel (i, j) is the mean of |U_j^T J_i V_j| over the top K of block j.

    Under RA2 every panel is nearly diagonal. Each row is divided by the top
    singular value of its block i, so that deep blocks (with small singular
    values) stay visible. At most ``top`` blocks (spread evenly over depth) are
    drawn so that panels stay legible.
    """
    grid = report.ra2["alignment_grid"]
    L = grid.shape[0]
    K = K or grid.shape[-1]
    idx = np.unique(np.linspace(0, L - 1, min(top, L)).round().astype(int))
    fig, axes = plt.subplots(
        len(idx), len(idx), figsize=(1.3 * len(idx) + 1, 1.3 * len(idx)), squeeze=False
    )
    for a, i in enumerate(idx):
        scale = grid[i, i, 0, 0]  # sigma_1 of block i, so rows share a scale
        for b, j in enumerate(idx):
            ax = axes[a, b]
            im = ax.imshow(grid[i, j, :K, :K] / scale, vmin=0, vmax=1, cmap="magma")
            ax.set_xticks([])
            ax.set_yticks([])
            ax.grid(False)
            if a == len(idx) - 1:
                ax.set_xlabel(f"j={j + 1}", fontsize=8)
            if b == 0:
                ax.set_ylabel(f"i={i + 1}", fontsize=8)
    label = r"mean $|U_j^\top J_i V_j|\,/\,\sigma_1(J_i)$"
    fig.colorbar(im, ax=axes, shrink=0.6, label=label)
    fig.suptitle(f"RA2: alignment of block i's Jacobian to block j's top {K}")
    return fig


def plot_coupling(report: Report) -> Figure:
    """RA2: coupling m(i, j) (0 = aligned) beside the random-basis baseline."""
    fig, axes = plt.subplots(1, 2, figsize=(8, 3.6))
    grids = (report.ra2["coupling_grid"], report.ra2["random_grid"])
    titles = (
        f"trained: mean {report.ra2['coupling']:.2f}",
        f"random bases: mean {report.ra2['coupling_random']:.2f}",
    )
    vmax = max(1.0, float(np.nanmax(grids[1])))
    for ax, grid, title in zip(axes, grids, titles, strict=True):
        im = ax.imshow(grid, vmin=0, vmax=vmax, cmap="viridis")
        _block_ticks(ax, grid.shape[0])
        ax.set_xlabel("block j (bases)")
        ax.set_ylabel("block i (Jacobian)")
        ax.set_title(title)
    fig.colorbar(im, ax=axes, shrink=0.8, label="coupling m(i, j)")
    return fig


def plot_spectra(report: Report, top: int = 15, ax: plt.Axes | None = None) -> Figure:
    """RA3: the top singular values of every block, the first C in red.

    Each dot is one singular value of one input's Jacobian; a sharp drop after
    the C-th value means rank at most C.
    """
    fig, ax = _axes(ax, (5.5, 4))
    sigma = report.sigma[..., :top]  # (L, N, top)
    L, N, k = sigma.shape
    C = report.num_classes
    rng = np.random.default_rng(0)
    for r in range(k):
        x = np.arange(1, L + 1)[:, None] + rng.uniform(-0.25, 0.25, (L, N))
        color = HIGHLIGHT if r < C else MUTED
        ax.scatter(x, sigma[:, :, r], s=3, color=color, alpha=0.35, lw=0)
    ax.set_yscale("log")
    ax.set_xlabel("block l")
    ax.set_ylabel(r"singular values of $J_l$")
    ax.set_title(f"RA3: top {top} singular values (first C={C} in red)")
    return fig


def plot_inverse_sigma(report: Report, ax: plt.Axes | None = None) -> Figure:
    """RA4: 1/sigma_1 of every block with its least-squares line."""
    fig, ax = _axes(ax, (5, 3.6))
    inv = 1 / report.ra4["sigma1"]
    x = np.arange(1, len(inv) + 1)
    fit = report.ra4["fit"]
    ax.plot(x, inv, "o", color=PALETTE(0), label=r"$1/\sigma_1(J_l)$ (mean)")
    ax.plot(
        x,
        fit["intercept"] + fit["slope"] * x,
        "-",
        color=HIGHLIGHT,
        label=f"fit: slope {fit['slope']:.3f}, $R^2$ {fit['r2']:.2f}",
    )
    ax.set_xlabel("block l")
    ax.set_ylabel(r"$1/\sigma_1$")
    ax.set_title("RA4: inverse top singular value per block")
    ax.legend()
    return fig


def plot_depth_scaling(
    depths: Sequence[int], sigma1: Sequence[float], fit: Mapping[str, float]
) -> Figure:
    """RA4 across networks: mean sigma_1 against total depth L on log-log axes."""
    fig, ax = _axes(None, (5, 3.8))
    depths = np.asarray(depths, dtype=float)
    ax.loglog(depths, sigma1, "o", color=PALETTE(0), label=r"mean $\sigma_1$")
    line = np.exp(fit["intercept"]) * depths ** fit["slope"]
    ax.loglog(depths, line, "-", color=HIGHLIGHT, label=f"slope {fit['slope']:.2f}")
    ref = sigma1[0] * depths[0] / depths
    ax.loglog(depths, ref, ":", color=MUTED, label="1/L")
    ax.set_xticks(depths, [str(int(d)) for d in depths])
    ax.set_xlabel("total depth L (blocks)")
    ax.set_ylabel(r"$\sigma_1$")
    ax.set_title(r"RA4: $\sigma_1$ against depth")
    ax.legend()
    return fig


def plot_neural_collapse(ncs: Mapping[str, Mapping[str, float]]) -> Figure:
    """Bar chart of NC1-NC4 for several models (log scale; smaller = collapsed)."""
    keys = ["nc1", "nc2_equinorm", "nc2_equiangle", "nc3", "nc4"]
    fig, ax = _axes(None, (6.5, 3.6))
    width = 0.8 / len(ncs)
    for m, (name, nc) in enumerate(ncs.items()):
        vals = [max(float(nc[k]), 1e-4) for k in keys]
        ax.bar(np.arange(len(keys)) + m * width, vals, width, label=name)
    ax.set_xticks(np.arange(len(keys)) + width * (len(ncs) - 1) / 2, keys)
    ax.set_yscale("log")
    ax.set_ylabel("value (0 = collapse)")
    ax.set_title("Neural Collapse of the last-layer features")
    ax.legend()
    return fig


def overview(report: Report) -> Figure:
    """The four standard figures of one model in a 2x2 grid."""
    fig, axes = plt.subplots(2, 2, figsize=(10, 8))
    plot_trajectories(report, ax=axes[0, 0])
    _coupling_panel(report, axes[0, 1], fig)
    plot_spectra(report, ax=axes[1, 0])
    plot_inverse_sigma(report, ax=axes[1, 1])
    return fig


def _coupling_panel(report: Report, ax: plt.Axes, fig: Figure) -> None:
    grid = report.ra2["coupling_grid"]
    im = ax.imshow(grid, vmin=0, vmax=1, cmap="viridis")
    _block_ticks(ax, grid.shape[0])
    ax.set_xlabel("block j")
    ax.set_ylabel("block i")
    ax.set_title(
        f"RA2: coupling {report.ra2['coupling']:.2f} "
        f"(random {report.ra2['coupling_random']:.2f})"
    )
    fig.colorbar(im, ax=ax, shrink=0.8, label="m(i, j), 0 = aligned")


def _block_ticks(ax: plt.Axes, L: int) -> None:
    """Label the rows and columns of an L x L block grid 1..L."""
    ticks = np.arange(L)
    step = max(1, L // 8)
    ax.set_xticks(ticks[::step], (ticks + 1)[::step], fontsize=7)
    ax.set_yticks(ticks[::step], (ticks + 1)[::step], fontsize=7)
    ax.grid(False)


def plot_line_scores(reports: Mapping[str, Report]) -> Figure:
    """RA1 per input: line-shape score and step-length CV for several models."""
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.4))
    for m, (name, rep) in enumerate(reports.items()):
        lss = np.asarray(rep.ra1["line_shape_score"])
        cv = np.asarray(rep.ra1["step_cv"])
        axes[0].hist(lss, bins=30, alpha=0.6, color=PALETTE(m), label=name)
        axes[1].hist(cv, bins=30, alpha=0.6, color=PALETTE(m), label=name)
    axes[0].set_xlabel("line-shape score (1 = straight)")
    axes[1].set_xlabel("CV of step lengths (0 = equal steps)")
    for ax in axes:
        ax.set_ylabel("inputs")
        ax.legend()
    fig.suptitle("RA1 per input")
    return fig


def plot_step_lengths(reports: Mapping[str, Report]) -> Figure:
    """RA1: length of each step |h_{l+1} - h_l| (median and quartiles over inputs)."""
    fig, ax = _axes(None, (5.5, 3.6))
    for m, (name, rep) in enumerate(reports.items()):
        hs = _stacked(rep)
        steps = (hs[1:] - hs[:-1]).norm(dim=-1).numpy()  # (L, N)
        steps = steps / np.median(steps)
        x = np.arange(1, steps.shape[0] + 1)
        q1, med, q3 = np.percentile(steps, [25, 50, 75], axis=1)
        ax.plot(x, med, "o-", color=PALETTE(m), label=name)
        ax.fill_between(x, q1, q3, color=PALETTE(m), alpha=0.2)
    ax.set_xlabel("block l")
    ax.set_ylabel(r"$|h_{l} - h_{l-1}|$ / median step")
    ax.set_yscale("log")
    ax.set_title("RA1: step lengths along the path")
    ax.legend()
    return fig


def _axes(ax: plt.Axes | None, size: tuple[float, float]) -> tuple[Figure, plt.Axes]:
    if ax is not None:
        return ax.figure, ax
    fig, ax = plt.subplots(figsize=size)
    return fig, ax


def _class_legend(ax: plt.Axes, labels: np.ndarray) -> None:
    classes = np.unique(labels)
    if len(classes) > 10:
        return
    handles = [
        mpl.lines.Line2D([], [], color=PALETTE(int(c) % 10), label=str(c))
        for c in classes
    ]
    ax.legend(handles=handles, title="class", fontsize=7, ncols=2)
