"""One call that measures every Residual Alignment property of a model.

:func:`measure` walks the residual blocks of a model (through the view of
:mod:`resalign.adapters`), computes the top singular triplets of every block's
Residual Jacobians at the given inputs (exactly for small blocks, matrix-free
for large ones), and collects RA1-RA4 and Neural Collapse into a
:class:`Report` that the plots read.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from tqdm.auto import tqdm

from . import metrics
from .adapters import as_view
from .jacobians import residual_jacobians
from .spectra import gram_svd, top_singular

__all__ = ["DENSE_LIMIT", "Report", "measure", "measure_trained"]

#: Blocks whose Jacobian has at most this many entries are decomposed exactly.
DENSE_LIMIT = 512 * 512

Triplet = tuple[torch.Tensor, torch.Tensor, torch.Tensor]


@dataclass
class Report:
    """Everything measured on one model at one set of inputs.

    Attributes
    ----------
    hs : list of Tensor
        Representations h_0..h_L, each ``(N, D_l)`` (flattened, on the CPU).
    spectra : list of (U, S, V)
        Top-k singular triplets of every block's Residual Jacobians,
        ``U (N, d_out, k)``, ``S (N, k)``, ``V (N, d_in, k)``.
    labels : Tensor
        Labels of the N inputs.
    num_classes : int
        Number of classes C.
    ra1, ra2, ra3, ra4, nc : dict
        Metrics of each property (see :mod:`resalign.metrics`).
    """

    hs: list[torch.Tensor]
    spectra: list[Triplet]
    labels: torch.Tensor
    num_classes: int
    ra1: dict = field(default_factory=dict)
    ra2: dict = field(default_factory=dict)
    ra3: dict = field(default_factory=dict)
    ra4: dict = field(default_factory=dict)
    nc: dict = field(default_factory=dict)

    @property
    def alignment_grid(self) -> np.ndarray:
        """Mean ``|U_j^T J_i V_j|`` of every block pair, ``(L, L, K, K)``.

        Computed on first use (it serves the plots, not the metrics) and kept
        in ``ra2["alignment_grid"]``.
        """
        if "alignment_grid" not in self.ra2:
            self.ra2["alignment_grid"] = metrics.alignment_grid(self.spectra)
        return self.ra2["alignment_grid"]

    @property
    def depth(self) -> int:
        """Number of residual blocks L."""
        return len(self.spectra)

    @property
    def sigma(self) -> np.ndarray:
        """Singular values, ``(L, N, k)``."""
        return np.stack([s.numpy() for _, s, _ in self.spectra])

    def summary(self) -> dict[str, float]:
        """The headline numbers, one float each (medians over inputs)."""
        out = {
            "line_shape_score": float(np.median(self.ra1["line_shape_score"])),
            "step_cv": float(np.median(self.ra1["step_cv"])),
            "principal_share": float(np.median(self.ra1["principal_share"])),
            "coupling": self.ra2["coupling"],
            "coupling_random": self.ra2["coupling_random"],
            "coupling_ratio": self.ra2["coupling"] / self.ra2["coupling_random"],
            "rank_median": float(np.median(self.ra3["rank"])),
            "gap_C": float(np.median(self.ra3["gap"])),
            "inv_sigma_slope": self.ra4["fit"]["slope"],
            "inv_sigma_r2": self.ra4["fit"]["r2"],
            "sigma1_mean": float(np.mean(self.ra4["sigma1"])),
        }
        out.update({k: float(v) for k, v in self.nc.items()})
        return out


@contextlib.contextmanager
def single_thread() -> Iterator[None]:
    """Run torch's CPU kernels on one thread inside the block.

    Batched SVDs and QRs of many small matrices were measured here to run up to
    100 times slower on two threads than on one when the cores are busy
    (threads spin while waiting for each other); the work is batched already.
    """
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _stages(shapes: Sequence[tuple[int, ...]]) -> list[list[int]]:
    """Indices of representations grouped into runs of equal shape."""
    runs: list[list[int]] = [[0]]
    for i in range(1, len(shapes)):
        if shapes[i] == shapes[i - 1]:
            runs[-1].append(i)
        else:
            runs.append([i])
    return runs


def block_spectrum(
    block, h: torch.Tensor, k: int, *, chunk: int = 200, seed: int = 0
) -> Triplet:
    """Top-k singular triplets of one block's Residual Jacobians at ``h``.

    Dense (closed-form or autodiff Jacobian, then :func:`~.spectra.gram_svd`:
    Gram eigenvectors, checked, exact SVD where the check fails) when the
    Jacobian has at most :data:`DENSE_LIMIT` entries; matrix-free otherwise.
    """
    d_in = math.prod(block.in_shape)
    d_out = math.prod(block.out_shape)
    k = min(k, d_in, d_out)
    if d_in * d_out <= DENSE_LIMIT:
        jac = residual_jacobians(block.branch, h, post=block.post, skip=block.skip)
        return gram_svd(jac, k=k, chunk=chunk)
    return top_singular(block.branch, h, k, post=block.post, skip=block.skip, seed=seed)


@torch.no_grad()
def _representations(view, x: torch.Tensor) -> list[torch.Tensor]:
    return view.representations(x)


def measure(
    model: object,
    inputs: torch.Tensor,
    labels: torch.Tensor | None = None,
    *,
    k: int = 30,
    num_classes: int | None = None,
    nc_data: tuple[torch.Tensor, torch.Tensor] | None = None,
    rank_rtol: float = 1e-2,
    batch_size: int = 100,
    seed: int = 0,
    progress: bool = False,
) -> Report:
    """Measure RA1-RA4 (and Neural Collapse) of ``model`` at ``inputs``.

    Parameters
    ----------
    model : object
        A resalign model or anything :func:`resalign.adapters.as_view` accepts;
        it should be in eval mode.
    inputs : Tensor
        ``(N, *input_shape)`` inputs at which the Jacobians are taken.
    labels : Tensor, optional
        Their labels (used for colouring and, without ``nc_data``, for NC).
    k : int, default 30
        Number of singular triplets per block.
    num_classes : int, optional
        C; default: the classifier's number of outputs.
    nc_data : (x, y), optional
        Inputs and labels for Neural Collapse (e.g. the whole training set);
        default ``(inputs, labels)``. NC is skipped when no labels are known.
    rank_rtol : float, default 1e-2
        Relative tolerance of the numerical rank (values above
        ``rank_rtol * sigma_1`` count).
    batch_size : int, default 100
        Inputs per Jacobian batch (bounds memory for conv blocks).
    seed : int, default 0
        Seed of the random probes (matrix-free spectra, random baseline).
    progress : bool, default False
        Show a progress bar over blocks.

    Returns
    -------
    Report
    """
    view = as_view(model)
    num_classes = num_classes or view.classifier.out_features
    if k <= num_classes:
        raise ValueError(f"k={k} must exceed num_classes={num_classes} for RA3")
    with single_thread():
        return _measure(
            view,
            inputs,
            labels,
            k,
            num_classes,
            nc_data,
            rank_rtol,
            batch_size,
            seed,
            progress,
        )


def _measure(
    view, inputs, labels, k, num_classes, nc_data, rank_rtol, batch_size, seed, progress
) -> Report:
    device = next(view.classifier.parameters()).device
    x = inputs.to(device)

    hs = [h.detach() for h in _representations(view, x)]
    blocks = view.blocks()
    spectra = []
    bar = tqdm(blocks, desc="blocks", disable=not progress, unit="block")
    for i, block in enumerate(bar):
        parts = [
            block_spectrum(block, hs[i][j : j + batch_size], k, seed=seed + i)
            for j in range(0, len(x), batch_size)
        ]
        spectra.append(
            tuple(torch.cat(p).detach().cpu() for p in zip(*parts, strict=True))
        )
    flat = [h.flatten(1).cpu() for h in hs]
    label_cpu = labels.cpu() if labels is not None else torch.zeros(len(x), dtype=int)
    report = Report(flat, spectra, label_cpu, num_classes)

    _fill_ra1(report)
    _fill_ra2(report, seed)
    _fill_ra3(report, rank_rtol)
    _fill_ra4(report)
    if nc_data is None and labels is not None:
        nc_data = (inputs, labels)
    if nc_data is not None:
        report.nc = neural_collapse_of(view, *nc_data, num_classes=num_classes)
    return report


def _fill_ra1(report: Report) -> None:
    """RA1 on the longest run of equal-shape representations."""
    shapes = [tuple(h.shape[1:]) for h in report.hs]
    stage = max(_stages(shapes), key=len)
    hs = torch.stack([report.hs[i] for i in stage])
    report.ra1 = {
        "stage": stage,
        "line_shape_score": metrics.line_shape_score(hs),
        "step_cv": metrics.step_cv(hs),
        "principal_share": metrics.principal_share(hs),
    }


def _fill_ra2(report: Report, seed: int) -> None:
    grid = metrics.coupling_grid(report.spectra)
    random_grid = metrics.random_coupling_grid(report.spectra, seed=seed)
    report.ra2 = {
        "coupling_grid": grid,
        "random_grid": random_grid,
        "coupling": metrics.summarize_coupling(grid),
        "coupling_random": metrics.summarize_coupling(random_grid),
    }


def _fill_ra3(report: Report, rtol: float) -> None:
    sigma = torch.stack([s for _, s, _ in report.spectra])
    c = report.num_classes
    report.ra3 = {
        "rank": metrics.numerical_rank(sigma, rtol=rtol),
        "gap": metrics.singular_gap(sigma, c),
        "gap_before": metrics.singular_gap(sigma, c - 1) if c > 1 else None,
        "largest_gap_index": metrics.largest_gap_index(sigma),
        "rtol": rtol,
    }


def _fill_ra4(report: Report) -> None:
    sigma1 = np.array([float(s[:, 0].mean()) for _, s, _ in report.spectra])
    report.ra4 = {"sigma1": sigma1, "fit": metrics.inverse_sigma_fit(sigma1)}


@torch.no_grad()
def neural_collapse_of(
    model: object,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    num_classes: int | None = None,
    batch_size: int = 1000,
) -> dict[str, float]:
    """Neural Collapse metrics of the last-layer features of ``model`` on (x, y)."""
    view = as_view(model)
    device = next(view.classifier.parameters()).device
    feats = torch.cat(
        [
            view.features(x[i : i + batch_size].to(device))
            for i in range(0, len(x), batch_size)
        ]
    )
    clf = view.classifier
    return metrics.neural_collapse(
        feats, y.to(device), clf.weight, clf.bias, num_classes=num_classes
    )


def measure_trained(
    run: object, inputs_per_class: int = 10, k: int = 30, **options: object
) -> Report:
    """Measure a :class:`~resalign.store.Trained` run at the authors' inputs.

    RA is measured at the first ``inputs_per_class`` training inputs of every
    class; Neural Collapse on the whole training set.
    """
    from .data import first_per_class

    data = run.data
    x, y = first_per_class(data.x_train, data.y_train, inputs_per_class)
    return measure(
        run.model, x, y, k=k, nc_data=(data.x_train, data.y_train), **options
    )
