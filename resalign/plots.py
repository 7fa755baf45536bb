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
    "plot_class_means",
    "plot_alignment_grid",
    "plot_coupling",
    "plot_depth_scaling",
    "plot_inverse_sigma",
    "plot_inverse_sigma_many",
    "plot_line_scores",
    "plot_metric_sweep",
    "plot_step_lengths",
    "plot_neural_collapse",
    "plot_rank_vs_classes",
    "plot_relative_spectra",
    "plot_sigma_profiles",
    "plot_spectra",
    "plot_training_dynamics",
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
    grid = report.alignment_grid
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


def plot_inverse_sigma_many(reports: Mapping[str, Report]) -> Figure:
    """RA4 for several models: 1/sigma_1 (mean over inputs) against the block."""
    fig, ax = _axes(None, (5.5, 3.8))
    for m, (name, rep) in enumerate(reports.items()):
        inv = 1 / np.asarray(rep.ra4["sigma1"])
        r2 = rep.ra4["fit"]["r2"]
        x = np.arange(1, len(inv) + 1)
        ax.plot(x, inv, "o-", color=PALETTE(m), ms=4, label=f"{name} ($R^2$ {r2:.2f})")
    ax.set_xlabel("block l")
    ax.set_ylabel(r"$1/\sigma_1$")
    ax.set_title("RA4: inverse top singular value per block")
    ax.legend(fontsize=8)
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
    ax.xaxis.set_minor_formatter(mpl.ticker.NullFormatter())
    _plain_log_labels(ax.yaxis)
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


def plot_rank_vs_classes(
    reports: Sequence[Report], ax: plt.Axes | None = None
) -> Figure:
    """RA3 across class counts: numerical rank of every block against C.

    Parameters
    ----------
    reports : sequence of Report
        One per model, each trained on C classes (read from ``num_classes``).
    ax : Axes, optional
        Where to draw; a new figure otherwise.

    Returns
    -------
    Figure
        Per block, the median over inputs of ``report.ra3["rank"]`` (values
        above ``rtol * sigma_1``) against C, one line per block, beside the
        lines rank = C (RA3's bound) and rank = C - 1.
    """
    fig, ax = _axes(ax, (5.5, 4))
    cs = np.array([rep.num_classes for rep in reports], dtype=float)
    ranks = np.stack([np.median(rep.ra3["rank"], axis=1) for rep in reports], axis=1)
    L = ranks.shape[0]
    cmap = plt.get_cmap("viridis")
    offsets = np.linspace(-0.15, 0.15, L) if L > 1 else np.zeros(1)
    for block in range(L):
        color = cmap(block / max(L - 1, 1))
        label = f"block {block + 1}"
        ax.plot(cs + offsets[block], ranks[block], "o-", color=color, ms=4, label=label)
    grid = np.linspace(cs.min(), cs.max(), 50)
    ref = {"lw": 1.5, "zorder": 3, "alpha": 0.8}
    ax.plot(grid, grid, "-", color="black", label="rank = C", **ref)
    ax.plot(grid, grid - 1, "--", color=HIGHLIGHT, label="rank = C - 1", **ref)
    rtol = reports[0].ra3.get("rtol", 1e-2)
    ax.set_xticks(cs, [str(int(c)) for c in cs])
    ax.set_xlabel("number of classes C")
    ax.set_ylabel(f"median numerical rank (> {rtol:g} " + r"$\sigma_1$)")
    ax.set_title("RA3: rank of the Residual Jacobians against C")
    ax.legend(fontsize=7, ncols=2)
    return fig


def plot_relative_spectra(
    reports: Sequence[Report],
    top: int = 15,
    first_block: int = 2,
    ax: plt.Axes | None = None,
    labels: Sequence[str] | None = None,
) -> Figure:
    """RA3: where the spectrum drops, for models trained on different C.

    Parameters
    ----------
    reports : sequence of Report
        One per model; C is read from ``num_classes``.
    top : int, default 15
        Number of singular values drawn.
    first_block : int, default 2
        First block (1-based) pooled; blocks before it are left out.
    ax : Axes, optional
        Where to draw; a new figure otherwise.
    labels : sequence of str, optional
        Legend entries, one per report (default: "C = ...").

    Returns
    -------
    Figure
        The median and quartiles over blocks ``first_block..L`` and inputs of
        ``sigma_r / sigma_1`` against r, on a log scale, with the numerical
        rank tolerance as a horizontal line. A square marks r = C.
    """
    fig, ax = _axes(ax, (5.5, 4))
    r = np.arange(1, top + 1)
    for m, rep in enumerate(reports):
        sigma = rep.sigma[first_block - 1 :, :, :top]
        rel = (sigma / sigma[..., :1]).reshape(-1, sigma.shape[-1])
        q1, med, q3 = np.percentile(rel, [25, 50, 75], axis=0)
        C = rep.num_classes
        color = PALETTE(m)
        label = f"C = {C}" if labels is None else labels[m]
        ax.plot(r[: med.size], med, "o-", color=color, ms=3, label=label)
        ax.fill_between(r[: med.size], q1, q3, color=color, alpha=0.2)
        if C <= med.size:
            ax.plot(C, med[C - 1], "s", color=color, ms=8, mfc="none", mew=1.5)
    rtol = reports[0].ra3.get("rtol", 1e-2)
    ax.axhline(rtol, color="black", lw=0.8, ls=":", label=f"{rtol:g} (rank cut)")
    ax.set_yscale("log")
    ax.set_xlabel("index r")
    ax.set_ylabel(r"$\sigma_r / \sigma_1$")
    ax.set_title(f"RA3: spectra of blocks {first_block}..L (square: r = C)")
    ax.legend(fontsize=8)
    return fig


def plot_class_means(
    features: Mapping[str, tuple[torch.Tensor, torch.Tensor]],
) -> Figure:
    """Neural Collapse in pictures: the geometry of the last-layer class means.

    Parameters
    ----------
    features : mapping of str to (features, labels)
        For each model (one column), last-layer features ``(N, D)`` and
        integer labels ``(N,)`` in ``0 .. C-1``, every class present.

    Returns
    -------
    Figure
        Top row: cosines between the centred class means ``mu_c - mu_G``; a
        simplex equiangular tight frame has ``1`` on the diagonal and
        ``-1/(C-1)`` elsewhere. Bottom row: every centred feature projected
        on the top two principal directions of the centred class means,
        coloured by class, with the class means as black crosses; under
        collapse each class shrinks to its mean.
    """
    names = list(features)
    fig, axes = plt.subplots(
        2, len(names), figsize=(3.4 * len(names) + 1, 6.4), squeeze=False
    )
    for col, name in enumerate(names):
        h = torch.as_tensor(features[name][0]).detach().cpu().double()
        labels = torch.as_tensor(features[name][1]).cpu().long()
        C = int(labels.max()) + 1
        means = torch.stack([h[labels == c].mean(0) for c in range(C)])
        centre = h.mean(0)
        m = means - centre
        unit = m / m.norm(dim=1, keepdim=True)
        cos = (unit @ unit.T).numpy()
        off = cos[~np.eye(C, dtype=bool)]
        ax = axes[0, col]
        im = ax.imshow(cos, vmin=-1, vmax=1, cmap="RdBu_r")
        ax.set_xticks(range(C), range(C), fontsize=7)
        ax.set_yticks(range(C), range(C), fontsize=7)
        ax.grid(False)
        ax.set_title(f"{name}\noff-diagonal cos {off.mean():.2f} ± {off.std():.2f}")
        basis = torch.linalg.svd(m, full_matrices=False)[2][:2].T
        xy = ((h - centre) @ basis).numpy()
        mu = (m @ basis).numpy()
        ax = axes[1, col]
        for c in range(C):
            pts = xy[labels.numpy() == c]
            ax.scatter(
                pts[:, 0], pts[:, 1], s=2, color=PALETTE(c % 10), alpha=0.3, lw=0
            )
        ax.scatter(mu[:, 0], mu[:, 1], marker="x", s=16, lw=0.8, color="k")
        ax.set_xlabel("class-mean PC 1")
        ax.set_ylabel("class-mean PC 2")
        ax.set_aspect("equal", adjustable="datalim")
    fig.colorbar(im, ax=axes[0, :], shrink=0.8, label="cosine of centred means")
    handles = [
        mpl.lines.Line2D([], [], ls="", marker="o", color=PALETTE(c % 10), label=str(c))
        for c in range(min(C, 10))
    ]
    axes[1, -1].legend(
        handles=handles,
        title="class",
        fontsize=7,
        loc="center left",
        bbox_to_anchor=(1.02, 0.5),
    )
    return fig


def plot_sigma_profiles(
    reports: Sequence[Report], scaled: bool = False, ax: plt.Axes | None = None
) -> Figure:
    """RA4 across networks: sigma_1 of every block against relative depth l/L.

    Parameters
    ----------
    reports : sequence of Report
        One per network; the total depth L is read from ``report.depth``.
    scaled : bool, default False
        Multiply sigma_1 by L. If sigma_1 at a fixed relative depth scales as
        1/L, the scaled profiles of all networks fall on one curve.
    ax : Axes, optional
        Where to draw; a new figure otherwise.

    Returns
    -------
    Figure
        One line per network: ``report.ra4["sigma1"]`` (the mean over inputs of
        each block's sigma_1), or L times it, against l/L, on a log scale.
    """
    fig, ax = _axes(ax, (5, 3.8))
    cmap = plt.get_cmap("plasma")
    for m, rep in enumerate(reports):
        L = rep.depth
        sigma1 = np.asarray(rep.ra4["sigma1"]) * (L if scaled else 1)
        color = cmap(0.85 * m / max(len(reports) - 1, 1))
        x = np.arange(1, L + 1) / L
        ax.plot(x, sigma1, "o-", color=color, ms=3, label=f"L = {L}")
    ax.set_yscale("log")
    _plain_log_labels(ax.yaxis)
    ax.set_xlabel("relative depth l / L")
    ax.set_ylabel(r"$L\,\sigma_1(J_l)$" if scaled else r"$\sigma_1(J_l)$")
    kind = r"$L\,\sigma_1$" if scaled else r"$\sigma_1$"
    ax.set_title(f"RA4: {kind} per block, networks of depth L")
    ax.legend(fontsize=8)
    return fig


def _plain_log_labels(axis: mpl.axis.Axis) -> None:
    """Label a log axis with plain numbers (0.2, 1, 30), minor ticks 2, 3, 5 too.

    Minor ticks are labelled only while the axis spans under two decades.
    """

    def minor(value: float, _: int) -> str:
        lo, hi = sorted(axis.get_view_interval())
        if lo <= 0 or np.log10(hi / lo) >= 2:
            return ""
        lead = round(value / 10 ** np.floor(np.log10(value)))
        return f"{value:.2g}" if lead in (2, 3, 5) else ""

    axis.set_major_formatter(mpl.ticker.FuncFormatter(lambda v, _: f"{v:g}"))
    axis.set_minor_formatter(mpl.ticker.FuncFormatter(minor))


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


#: Axis labels of the headline numbers (keys of ``Report.summary()``).
METRIC_LABELS = {
    "line_shape_score": "RA1: line-shape score",
    "step_cv": "RA1: CV of step lengths",
    "principal_share": "RA1: share on 1st direction",
    "coupling_ratio": "RA2: coupling / random",
    "rank_median": "RA3: median rank",
    "inv_sigma_r2": r"RA4: $R^2$ of $1/\sigma_1$ line",
    "sigma1_mean": r"mean $\sigma_1$",
    "nc1": "NC1",
    "train_acc": "training accuracy",
    "test_acc": "test accuracy",
}


def plot_metric_sweep(
    x: Sequence,
    values: Mapping[str, Sequence[float]],
    *,
    xlabel: str,
    thresholds: Mapping[str, float] | None = None,
    log: Sequence[str] = (),
    xscale: str = "linear",
    title: str = "",
) -> Figure:
    """Headline numbers against a swept setting, one small panel per metric.

    Parameters
    ----------
    x : sequence
        The setting (numbers, drawn as lines; or names, drawn as bars).
    values : mapping of metric name to sequence of float
        One value per entry of ``x``; names of :data:`METRIC_LABELS` get
        their label, others are shown as given.
    xlabel : str
        What ``x`` is.
    thresholds : mapping of metric name to float, optional
        Asserted thresholds, drawn as dashed red lines.
    log : sequence of str
        Metrics drawn on a log scale.
    xscale : str, default "linear"
        ``"linear"``, ``"log"`` or ``"symlog"`` for numeric ``x``.
    title : str
        Figure title.

    Returns
    -------
    Figure
    """
    thresholds = thresholds or {}
    names = list(values)
    cols = min(len(names), 4)
    rows = -(-len(names) // cols)
    size = (3.1 * cols, 2.6 * rows)
    fig, axes = plt.subplots(rows, cols, figsize=size, squeeze=False)
    categorical = any(isinstance(v, str) for v in x)
    pos = np.arange(len(x)) if categorical else np.asarray(x, dtype=float)
    for ax, name in zip(axes.flat, names, strict=False):
        v = np.asarray(values[name], dtype=float)
        if categorical:
            ax.bar(pos, v, color=[PALETTE(i) for i in range(len(x))], alpha=0.8)
            ax.set_xticks(pos, list(x), rotation=20, fontsize=8)
        else:
            ax.plot(pos, v, "o-", color=PALETTE(0), ms=4)
            ax.set_xscale(xscale)
            if xscale == "log":
                ax.set_xticks(pos, [f"{p:g}" for p in pos])
                ax.minorticks_off()
        if name in thresholds:
            ax.axhline(thresholds[name], color=HIGHLIGHT, ls="--", lw=1)
        if name in log:
            ax.set_yscale("log")
        ax.set_title(METRIC_LABELS.get(name, name), fontsize=9)
        ax.set_xlabel(xlabel, fontsize=8)
    for ax in list(axes.flat)[len(names) :]:
        ax.set_visible(False)
    if title:
        fig.suptitle(title)
    return fig


def plot_training_dynamics(
    trajectory: object,
    names: Sequence[str],
    thresholds: Mapping[str, float] | None = None,
    log: Sequence[str] = ("nc1",),
) -> Figure:
    """Headline numbers against SGD steps, measured during training.

    ``trajectory`` is a :class:`resalign.dynamics.Trajectory`; steps are on a
    symmetric-log axis so that initialisation (step 0) and the dense early
    points show. Thresholds are drawn as dashed red lines.
    """
    values = {name: trajectory[name] for name in names}
    fig = plot_metric_sweep(
        trajectory.step,
        values,
        xlabel="SGD step",
        thresholds=thresholds,
        log=log,
        xscale="symlog",
        title="Measured during training",
    )
    positive = [st for st in trajectory.step if st > 0]
    ticks = [0]
    if positive:  # decades clear of the linear part near 0
        first, last = np.log10(min(positive)), np.log10(max(positive))
        ticks += [10**e for e in range(int(np.floor(first)) + 1, int(last) + 1)]
    for ax in fig.axes:
        if positive:  # linear only up to the first measured step
            ax.set_xscale("symlog", linthresh=min(positive), linscale=0.5)
            ax.set_xticks(ticks, [f"{t:g}" for t in ticks])
            ax.minorticks_off()
        ax.set_xlim(left=0)
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
