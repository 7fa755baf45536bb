"""Sliders over precomputed measurements, with a static figure for every default.

Every explorer comes in two parts:

- a pure drawing function ``draw_*(value, ...)`` that returns a new
  ``matplotlib.figure.Figure`` for one value of the control and draws nothing
  else; called with the default value it gives the *static* figure, which a
  chapter shows first so that the rendered book (which has no Python kernel to
  move a slider) still shows what the default looks like;
- a builder ``*_explorer(...)`` that wires that function to a control and
  returns the control above the figure, an ``ipywidgets.VBox``. It needs a
  running kernel (Jupyter, Binder); without one, as in a headless build,
  it is created and drawn once at its default and then does nothing.

Nothing is measured here: the builders take :class:`~resalign.measurement.Report`
objects measured once per model, and moving a control only changes which of
them is drawn.

Why not ``ipywidgets.interactive_output``: it displays into an ``Output``
widget, and a headless executor (nbclient, used by papermill and jupyter-book)
mimics that widget by sending its whole output, images included, back to the
kernel on the shell channel, the channel on which it is waiting for the cell's
reply. Here (nbclient 0.11, ipykernel 7.4) every cell that displayed a large
figure into an ``Output`` widget that way waited until the executor's timeout,
and the explorer chapter hung without one (nbclient issue 312 reports similar
hangs). Each figure is therefore rendered to PNG bytes and shown in an
``ipywidgets.Image``: updating one sends messages from the kernel only, and
the same cells ran in seconds.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Mapping, Sequence

import ipywidgets
import matplotlib.pyplot as plt
import numpy as np
from matplotlib.figure import Figure

from . import plots
from .measurement import Report

__all__ = [
    "block_explorer",
    "class_explorer",
    "depth_explorer",
    "draw_block",
    "draw_classes",
    "draw_depth_grid",
    "draw_depth_paths",
]

Drawing = Callable[[int], "Figure | Sequence[Figure]"]


def _pick(reports: Mapping[int, Report], value: int, what: str) -> Report:
    if value not in reports:
        valid = ", ".join(str(v) for v in sorted(reports))
        raise ValueError(f"no report for {what} {value!r}; available: {valid}")
    return reports[value]


def _default(options: Sequence[int], value: int | None) -> int:
    """``value`` if given (it must be one of ``options``), else the largest."""
    if not options:
        raise ValueError("no reports to explore")
    if value is None:
        return options[-1]
    if value not in options:
        valid = ", ".join(str(v) for v in options)
        raise ValueError(f"default {value!r} is not available; available: {valid}")
    return value


def _pngs(figs: Figure | Sequence[Figure]) -> list[bytes]:
    """PNG bytes of each figure, at its screen resolution; the figures are closed.

    Closing keeps the inline backend from showing them a second time at the end
    of the cell, and frees their memory.
    """
    out = []
    for fig in [figs] if isinstance(figs, Figure) else figs:
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=fig.dpi)
        plt.close(fig)
        out.append(buf.getvalue())
    return out


def _explorer(control: ipywidgets.ValueWidget, draw: Drawing) -> ipywidgets.VBox:
    """``control`` above one ``Image`` per figure of ``draw(control.value)``."""
    layout = {"max_width": "100%", "height": "auto"}
    images = [
        ipywidgets.Image(value=png, format="png", layout=layout)
        for png in _pngs(draw(control.value))
    ]

    def redraw(change: dict) -> None:
        for image, png in zip(images, _pngs(draw(change["new"])), strict=True):
            image.value = png

    control.observe(redraw, names="value")
    return ipywidgets.VBox([control, *images])


# ---------------------------------------------------------------- total depth
def draw_depth_paths(depth: int, reports: Mapping[int, Report]) -> Figure:
    """RA1 at one total depth: the paths h_0 -> h_L (see ``plot_trajectories``).

    Parameters
    ----------
    depth : int
        Total depth L, a key of ``reports``.
    reports : mapping of int to Report
        One report per total depth.

    Returns
    -------
    Figure
        One axes.
    """
    fig = plots.plot_trajectories(_pick(reports, depth, "depth"))
    fig.axes[0].set_title(f"{depth} blocks. RA1: paths of the representations")
    return fig


def draw_depth_grid(
    depth: int, reports: Mapping[int, Report], K: int | None = 15, top: int = 8
) -> Figure:
    """RA2 at one total depth: the alignment grid (see ``plot_alignment_grid``).

    Parameters
    ----------
    depth : int
        Total depth L, a key of ``reports``.
    reports : mapping of int to Report
        One report per total depth.
    K : int or None, default 15
        Singular directions per panel (``None``: all that were measured).
    top : int, default 8
        At most this many blocks, spread evenly over depth, are drawn.

    Returns
    -------
    Figure
        ``min(top, L)**2`` panels and a colour bar.
    """
    fig = plots.plot_alignment_grid(_pick(reports, depth, "depth"), K=K, top=top)
    fig.suptitle(f"{depth} blocks. {fig.get_suptitle()}")
    return fig


def depth_explorer(
    reports: Mapping[int, Report], value: int | None = None
) -> ipywidgets.VBox:
    """A slider over total depth showing the paths and the alignment grid.

    Parameters
    ----------
    reports : mapping of int to Report
        One report per total depth L (the keys).
    value : int, optional
        The depth shown first; default the largest.

    Returns
    -------
    ipywidgets.VBox
        A ``SelectionSlider`` (``children[0]``) over the sorted depths above two
        ``Image`` widgets showing :func:`draw_depth_paths` and
        :func:`draw_depth_grid`.
    """
    options = sorted(reports)
    control = ipywidgets.SelectionSlider(
        options=options,
        value=_default(options, value),
        description="blocks L",
        continuous_update=False,
    )

    def draw(depth: int) -> tuple[Figure, Figure]:
        return draw_depth_paths(depth, reports), draw_depth_grid(depth, reports)

    return _explorer(control, draw)


# ---------------------------------------------------------- number of classes
def draw_classes(
    num_classes: int, reports: Mapping[int, Report], top: int = 15
) -> Figure:
    """RA3 for a model trained on C classes: its spectra, the first C in red.

    Parameters
    ----------
    num_classes : int
        C, a key of ``reports``.
    reports : mapping of int to Report
        One report per class count C.
    top : int, default 15
        Number of singular values drawn per block.

    Returns
    -------
    Figure
        One axes (see :func:`resalign.plots.plot_spectra`).
    """
    return plots.plot_spectra(_pick(reports, num_classes, "class count"), top=top)


def class_explorer(
    reports: Mapping[int, Report], value: int | None = None
) -> ipywidgets.VBox:
    """A selector over the class count C showing that model's spectra.

    Parameters
    ----------
    reports : mapping of int to Report
        One report per class count C (the keys).
    value : int, optional
        The C shown first; default the largest.

    Returns
    -------
    ipywidgets.VBox
        A ``SelectionSlider`` (``children[0]``) over the sorted class counts
        above an ``Image`` showing :func:`draw_classes`.
    """
    options = sorted(reports)
    control = ipywidgets.SelectionSlider(
        options=options,
        value=_default(options, value),
        description="classes C",
        continuous_update=False,
    )
    return _explorer(control, lambda c: draw_classes(c, reports))


# ------------------------------------------------------------- one block
def draw_block(block: int, report: Report, top: int = 15) -> Figure:
    """RA3 in one block: its singular values across inputs, the first C in red.

    Parameters
    ----------
    block : int
        Block index l, 1-based.
    report : Report
        The measured model.
    top : int, default 15
        Number of singular values drawn.

    Returns
    -------
    Figure
        One axes: for r = 1..top, the median over inputs of sigma_r(J_l) with
        its quartiles (red for r <= C, grey after), the medians of the other
        blocks as thin grey lines, and the rank tolerance ``rtol`` times the
        median sigma_1 as a dotted line. The title gives the block's median
        numerical rank.
    """
    L = report.depth
    if not 1 <= block <= L:
        raise ValueError(f"block must lie in 1..{L}, got {block!r}")
    sigma = report.sigma[..., :top]  # (L, N, top)
    C = report.num_classes
    r = np.arange(1, sigma.shape[-1] + 1)
    q1, med, q3 = np.percentile(sigma[block - 1], [25, 50, 75], axis=0)
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    if L > 1:
        others = np.median(np.delete(sigma, block - 1, axis=0), axis=1)  # (L-1, top)
        ax.plot(r, others.T, "-", color=plots.MUTED, lw=0.6, alpha=0.4)
    ax.plot(r, med, "-", color="black", lw=1)
    ax.fill_between(r, q1, q3, color=plots.MUTED, alpha=0.25, lw=0)
    first = r <= C
    ax.plot(
        r[first], med[first], "o", color=plots.HIGHLIGHT, ms=5, label=f"first C = {C}"
    )
    ax.plot(r[~first], med[~first], "o", color=plots.MUTED, ms=5, label="the rest")
    rtol = report.ra3.get("rtol", 1e-2)
    cut = rf"{rtol:g} $\sigma_1$ (rank cut)"
    ax.axhline(rtol * med[0], color="black", lw=0.8, ls=":", label=cut)
    rank = float(np.median(report.ra3["rank"][block - 1]))
    ax.set_yscale("log")
    ax.set_xlabel("index r")
    ax.set_ylabel(rf"$\sigma_r(J_{{{block}}})$")
    ax.set_title(f"block {block} of {L}: median rank {rank:g} (C = {C})")
    ax.legend(fontsize=8)
    return fig


def block_explorer(report: Report, value: int | None = None) -> ipywidgets.VBox:
    """A slider over the blocks of one model showing that block's spectrum.

    Parameters
    ----------
    report : Report
        The measured model.
    value : int, optional
        The block (1-based) shown first; default the middle one, ``L // 2``.

    Returns
    -------
    ipywidgets.VBox
        An ``IntSlider`` (``children[0]``) from 1 to L above an ``Image``
        showing :func:`draw_block`.
    """
    L = report.depth
    value = max(1, L // 2) if value is None else _default(range(1, L + 1), value)
    control = ipywidgets.IntSlider(
        value=value, min=1, max=L, description="block l", continuous_update=False
    )
    return _explorer(control, lambda b: draw_block(b, report))
