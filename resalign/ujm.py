"""A candidate Unconstrained Jacobians Model (UJM): our reconstruction.

The paper introduces an Unconstrained Jacobians Model in which Residual
Alignment provably occurs, but its exact formulation is not known to us. This
module simulates the candidate written down in the book's notes, a
reconstruction of ours:

- fixed features ``X`` of shape ``(N, d)`` with labels in ``[0, C)``
  (synthetic, from :func:`make_features`);
- free per-block linear maps ``J_1 .. J_L`` of shape ``(d, d)``, the Residual
  Jacobians themselves, acting as ``h_l = (I + J_l) h_{l-1}``;
- a linear classifier ``W`` of shape ``(C, d)`` (no bias) on ``h_L``, learned
  with weight decay or frozen;
- the objective

  ``CE(W h_L, y) + (lam/2) sum_l ||J_l||_F^2 + (weight_decay/2) ||W||_F^2``

  (the last term only for a learned ``W``), minimised in float64 by full-batch
  L-BFGS (default) or plain gradient descent.

Because the model is linear, every input has the same Residual Jacobian
``J_l`` in block ``l``; :func:`spectra_of` therefore returns the triplets of
``CONTRACT.md`` with a single input (``N = 1``), which the functions of
:mod:`resalign.metrics` accept as they are.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from . import measurement, metrics
from .measurement import Report, single_thread

__all__ = [
    "METHODS",
    "UJMResult",
    "fit_ujm",
    "geometric_step_cv",
    "make_features",
    "measure_ujm",
    "orthogonal_readout",
    "representations",
    "spectra_of",
]

#: Optimisers accepted by :func:`fit_ujm`.
METHODS = ("lbfgs", "gd")

_DTYPE = torch.float64
_DEFAULT_LR = {"lbfgs": 1.0, "gd": 0.5}

Triplet = tuple[torch.Tensor, torch.Tensor, torch.Tensor]


@dataclass(frozen=True)
class UJMResult:
    """A fitted Unconstrained Jacobians Model.

    Attributes
    ----------
    Js : torch.Tensor of shape (L, d, d)
        The Residual Jacobians ``J_1 .. J_L`` (float64, CPU).
    W : torch.Tensor of shape (C, d)
        The classifier (learned, or the frozen one that was given).
    history : numpy.ndarray
        The objective at every evaluation, the last at the returned
        parameters: for gradient descent at the start and after every step;
        for L-BFGS also at the trial points of its line searches (so it need
        not decrease monotonically).
    grad_norm : float
        Euclidean norm of the gradient of the objective with respect to all
        optimised parameters at the end; near ``0`` at a stationary point.
    cross_entropy : float
        Mean cross-entropy at the end.
    accuracy : float
        Training accuracy of ``argmax W h_L`` at the end, in ``[0, 1]``.
    lam : float
        Penalty coefficient of the Jacobians.
    weight_decay : float
        Penalty coefficient of ``W`` (``0`` when ``W`` is frozen).
    learned_readout : bool
        Whether ``W`` was optimised.
    method : str
        The optimiser, one of :data:`METHODS`.
    """

    Js: torch.Tensor
    W: torch.Tensor
    history: np.ndarray
    grad_norm: float
    cross_entropy: float
    accuracy: float
    lam: float
    weight_decay: float
    learned_readout: bool
    method: str

    @property
    def depth(self) -> int:
        """Number of blocks ``L``."""
        return int(self.Js.shape[0])

    @property
    def objective(self) -> float:
        """The final value of the objective."""
        return float(self.history[-1])


# ----------------------------------------------------------------------------
# Argument checks
# ----------------------------------------------------------------------------


def _positive_int(value: object, name: str, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer):
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    if int(value) < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def _nonnegative(value: object, name: str, strict: bool = False) -> float:
    x = float(value)  # type: ignore[arg-type]
    bad = not np.isfinite(x) or (x <= 0 if strict else x < 0)
    if bad:
        need = "> 0" if strict else ">= 0"
        raise ValueError(f"{name} must be a finite number {need}, got {value!r}")
    return x


def _features(X: object) -> torch.Tensor:
    x = torch.as_tensor(X).detach().to(device="cpu", dtype=_DTYPE)
    if x.ndim != 2 or x.shape[0] == 0 or x.shape[1] == 0:
        raise ValueError(
            f"X must have shape (N, d) with N, d >= 1, got {tuple(x.shape)}"
        )
    return x


def _jacobians(Js: object, dim: int | None = None) -> torch.Tensor:
    j = torch.as_tensor(Js).detach().to(device="cpu", dtype=_DTYPE)
    if j.ndim != 3 or j.shape[0] == 0 or j.shape[1] != j.shape[2]:
        raise ValueError(
            f"Js must have shape (L, d, d) with L >= 1, got {tuple(j.shape)}"
        )
    if dim is not None and j.shape[1] != dim:
        raise ValueError(f"Js act on dimension {j.shape[1]}, but X has d = {dim}")
    return j


# ----------------------------------------------------------------------------
# Data
# ----------------------------------------------------------------------------


def make_features(
    num_classes: int,
    dim: int,
    per_class: int,
    noise: float = 0.5,
    seed: int = 0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Synthetic fixed features: class means on a random simplex, plus noise.

    The ``C`` class means are ``C`` random orthonormal vectors of ``R^dim``
    (QR of a Gaussian matrix), centred on their mean and scaled to unit norm:
    a simplex of unit-norm means centred at the origin. Each input is its
    class mean plus isotropic Gaussian noise whose expected squared norm is
    ``noise**2`` (coordinates of standard deviation ``noise / sqrt(dim)``).

    Parameters
    ----------
    num_classes : int
        ``C >= 2``.
    dim : int
        Feature dimension ``d >= C``.
    per_class : int
        Inputs per class, ``>= 1``.
    noise : float, default 0.5
        Typical norm of the noise, ``>= 0`` (the class means have norm 1).
    seed : int, default 0
        Seed of the CPU generator.

    Returns
    -------
    X : torch.Tensor of shape (C * per_class, dim)
        Float64 features, grouped by class.
    y : torch.Tensor of shape (C * per_class,)
        Int64 labels ``0 .. C-1``, each repeated ``per_class`` times.

    Raises
    ------
    ValueError
        If an argument is outside the ranges above.
    """
    c = _positive_int(num_classes, "num_classes", 2)
    d = _positive_int(dim, "dim", c)
    n = _positive_int(per_class, "per_class", 1)
    sd = _nonnegative(noise, "noise")
    gen = torch.Generator().manual_seed(int(seed))
    basis, _ = torch.linalg.qr(torch.randn(d, c, generator=gen, dtype=_DTYPE))
    means = basis.T - basis.T.mean(dim=0)
    means = means / torch.linalg.vector_norm(means, dim=1, keepdim=True)
    y = torch.arange(c).repeat_interleave(n)
    eps = torch.randn(c * n, d, generator=gen, dtype=_DTYPE)
    return means[y] + sd / d**0.5 * eps, y


def orthogonal_readout(
    X: object, y: object, scale: float = 1.0, seed: int = 0
) -> torch.Tensor:
    """A classifier whose rows are orthogonal to every class mean of ``X``.

    Random Gaussian rows are projected onto the orthogonal complement of the
    span of the class means, centred on their mean (only differences of rows
    matter to the cross-entropy) and scaled to norm ``scale``. Frozen in
    :func:`fit_ujm`, it forces the Jacobians to move the class information
    into directions the classifier reads, so the map they must build sends
    each class-mean direction to a direction orthogonal to it.

    Parameters
    ----------
    X : array of shape (N, d)
        Features.
    y : integer array of shape (N,)
        Labels ``0 .. C-1``, every class present; ``d >= 2C`` is needed.
    scale : float, default 1.0
        Norm of every row, ``> 0``.
    seed : int, default 0
        Seed of the random rows.

    Returns
    -------
    torch.Tensor of shape (C, d)
        Float64; ``W @ mu_c = 0`` for every class mean ``mu_c``.
    """
    x = _features(X)
    labels = torch.as_tensor(y).detach().cpu().to(torch.int64)
    if labels.shape != (x.shape[0],):
        raise ValueError(
            f"y must have shape ({x.shape[0]},), got {tuple(labels.shape)}"
        )
    c = int(labels.max()) + 1
    counts = torch.bincount(labels, minlength=c)
    if int(labels.min()) < 0 or bool((counts == 0).any()) or c < 2:
        raise ValueError("y must hold labels 0 .. C-1 (C >= 2), every class present")
    d = x.shape[1]
    if d < 2 * c:
        raise ValueError(f"need d >= 2C = {2 * c} feature dimensions, got d = {d}")
    size = _nonnegative(scale, "scale", strict=True)
    means = torch.zeros(c, d, dtype=_DTYPE).index_add_(0, labels, x)
    means /= counts[:, None].to(_DTYPE)
    basis, _ = torch.linalg.qr(means.T)  # (d, C): spans the class means
    gen = torch.Generator().manual_seed(int(seed))
    rows = torch.randn(c, d, generator=gen, dtype=_DTYPE)
    rows = rows - (rows @ basis) @ basis.T
    rows = rows - rows.mean(dim=0)
    return size * rows / torch.linalg.vector_norm(rows, dim=1, keepdim=True)


# ----------------------------------------------------------------------------
# The model
# ----------------------------------------------------------------------------


def representations(X: object, Js: object) -> torch.Tensor:
    """The representations ``h_0 .. h_L`` of every input.

    ``h_0 = x`` and ``h_l = (I + J_l) h_{l-1}``.

    Parameters
    ----------
    X : array of shape (N, d)
        Features (the inputs ``h_0``).
    Js : array of shape (L, d, d)
        Residual Jacobians.

    Returns
    -------
    torch.Tensor of shape (L+1, N, d)
        Float64, in the layout :mod:`resalign.metrics` expects for ``hs``.
    """
    x = _features(X)
    js = _jacobians(Js, x.shape[1])
    hs = [x]
    for j in js:
        hs.append(hs[-1] + hs[-1] @ j.T)
    return torch.stack(hs)


def _forward(x: torch.Tensor, js: torch.Tensor) -> torch.Tensor:
    h = x
    for j in js:
        h = h + h @ j.mT
    return h


def fit_ujm(
    X: object,
    y: object,
    depth: int,
    lam: float,
    steps: int = 500,
    lr: float | None = None,
    seed: int = 0,
    *,
    weight_decay: float | None = None,
    readout: object | None = None,
    method: str = "lbfgs",
    init_scale: float = 1e-2,
    tol: float = 1e-10,
) -> UJMResult:
    """Fit the Unconstrained Jacobians Model to fixed features.

    Minimises ``CE(W h_L, y) + (lam/2) sum_l ||J_l||_F^2
    + (weight_decay/2) ||W||_F^2`` over ``J_1 .. J_L`` (and ``W`` unless
    ``readout`` is given), full batch, in float64 on the CPU with one thread
    (so a seed gives the same result on every machine with the same
    libraries).

    Parameters
    ----------
    X : array of shape (N, d)
        Fixed features.
    y : integer array of shape (N,)
        Labels in ``[0, C)``; ``C`` is the number of rows of ``readout`` if
        given, else ``max(y) + 1``.
    depth : int
        Number of blocks ``L >= 1``.
    lam : float
        Penalty coefficient of the Jacobians, ``>= 0``.
    steps : int, default 500
        Maximum number of optimiser steps: L-BFGS iterations (each with a
        strong-Wolfe line search; at most ``4 * steps`` evaluations in all)
        or gradient-descent steps.
    lr : float, optional
        Step size: default 1.0 for L-BFGS (the initial step of its line
        search) and 0.5 for gradient descent.
    seed : int, default 0
        Seed of the initialisation: ``J_l`` with i.i.d. entries of standard
        deviation ``init_scale / sqrt(d)`` (distinct in every block, so the
        symmetry between blocks is not imposed by the start), ``W`` with
        entries of standard deviation ``1 / sqrt(d)``.
    weight_decay : float, optional
        Penalty coefficient of a learned ``W``, ``>= 0``; default ``lam``.
        Must be left out when ``readout`` is given.
    readout : array of shape (C, d), optional
        A frozen classifier. Default: ``W`` is learned.
    method : {"lbfgs", "gd"}, default "lbfgs"
        The optimiser.
    init_scale : float, default 1e-2
        Scale of the initial Jacobians, ``>= 0``.
    tol : float, default 1e-10
        Stop early once the largest absolute entry of the gradient falls
        below ``tol`` (L-BFGS also stops when its steps no longer change the
        parameters or the objective by more than ``1e-15``).

    Returns
    -------
    UJMResult

    Raises
    ------
    ValueError
        On inconsistent shapes, labels outside ``[0, C)``, an unknown
        ``method``, or numbers outside the ranges above.
    """
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; valid: {', '.join(METHODS)}")
    x = _features(X)
    n, d = x.shape
    labels = torch.as_tensor(y).detach().cpu()
    if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
        raise ValueError(f"y must hold integer labels, got dtype {labels.dtype}")
    labels = labels.to(torch.int64)
    if labels.shape != (n,):
        raise ValueError(f"y must have shape ({n},), got {tuple(labels.shape)}")
    L = _positive_int(depth, "depth", 1)
    n_steps = _positive_int(steps, "steps", 1)
    lam_ = _nonnegative(lam, "lam")
    step = _nonnegative(_DEFAULT_LR[method] if lr is None else lr, "lr", strict=True)
    scale = _nonnegative(init_scale, "init_scale")
    tol_ = _nonnegative(tol, "tol")

    gen = torch.Generator().manual_seed(int(seed))
    if readout is None:
        c = int(labels.max()) + 1
        if c < 2:
            raise ValueError("y must contain at least two classes (labels 0 and 1)")
        wd = _nonnegative(
            lam_ if weight_decay is None else weight_decay, "weight_decay"
        )
        w = torch.randn(c, d, generator=gen, dtype=_DTYPE) / d**0.5
    else:
        if weight_decay is not None:
            raise ValueError(
                "weight_decay applies to a learned W; omit it with readout"
            )
        w = torch.as_tensor(readout).detach().to(device="cpu", dtype=_DTYPE).clone()
        if w.ndim != 2 or w.shape[1] != d or w.shape[0] < 2:
            raise ValueError(
                f"readout must have shape (C >= 2, {d}), got {tuple(w.shape)}"
            )
        c, wd = w.shape[0], 0.0
    if int(labels.min()) < 0 or int(labels.max()) >= c:
        lo, hi = int(labels.min()), int(labels.max())
        raise ValueError(f"y must lie in [0, {c}), got values in [{lo}, {hi}]")
    js = scale / d**0.5 * torch.randn(L, d, d, generator=gen, dtype=_DTYPE)

    js.requires_grad_(True)
    params = [js]
    if readout is None:
        w.requires_grad_(True)
        params.append(w)

    def objective() -> torch.Tensor:
        logits = _forward(x, js) @ w.T
        value = F.cross_entropy(logits, labels) + 0.5 * lam_ * (js**2).sum()
        return value + 0.5 * wd * (w**2).sum() if readout is None else value

    history: list[float] = []

    def closure() -> torch.Tensor:
        for p in params:
            p.grad = None
        value = objective()
        value.backward()
        history.append(float(value.detach()))
        if not np.isfinite(history[-1]):
            raise FloatingPointError(
                f"the objective diverged after {len(history) - 1} evaluations; "
                "use a smaller lr"
            )
        return value

    with single_thread():
        if method == "lbfgs":
            opt = torch.optim.LBFGS(
                params,
                lr=step,
                max_iter=n_steps,
                max_eval=4 * n_steps,
                history_size=50,
                tolerance_grad=tol_,
                tolerance_change=1e-15,
                line_search_fn="strong_wolfe",
            )
            opt.step(closure)
            closure()
        else:
            sgd = torch.optim.SGD(params, lr=step)
            closure()
            for _ in range(n_steps):
                if max(float(p.grad.abs().max()) for p in params) < tol_:
                    break
                sgd.step()
                closure()
        grad_norm = float(torch.sqrt(sum((p.grad**2).sum() for p in params)))
        with torch.no_grad():
            logits = _forward(x, js) @ w.T
            ce = float(F.cross_entropy(logits, labels))
            acc = float((logits.argmax(dim=1) == labels).to(_DTYPE).mean())

    return UJMResult(
        Js=js.detach().clone(),
        W=w.detach().clone(),
        history=np.asarray(history),
        grad_norm=grad_norm,
        cross_entropy=ce,
        accuracy=acc,
        lam=lam_,
        weight_decay=wd,
        learned_readout=readout is None,
        method=method,
    )


# ----------------------------------------------------------------------------
# Measurements
# ----------------------------------------------------------------------------


def spectra_of(Js: object, k: int | None = None) -> list[Triplet]:
    """Top-k singular triplets of every block, in the layout of ``CONTRACT.md``.

    Parameters
    ----------
    Js : array of shape (L, d_out, d_in)
        Residual Jacobians (the same for every input in this linear model).
    k : int, optional
        Number of triplets, in ``[1, min(d_out, d_in)]``; default all.

    Returns
    -------
    list of L triples (U, S, V)
        ``U (1, d_out, k)``, ``S (1, k)`` descending, ``V (1, d_in, k)``,
        float64, with ``J_l V = U diag(S)`` (paired signs): one "input" per
        block, as :func:`resalign.metrics.coupling_grid` takes them.
    """
    j = torch.as_tensor(Js).detach().to(device="cpu", dtype=_DTYPE)
    if j.ndim != 3 or j.shape[0] == 0:
        raise ValueError(f"Js must have shape (L, d_out, d_in), got {tuple(j.shape)}")
    limit = min(j.shape[1], j.shape[2])
    if k is None:
        k = limit
    elif isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= limit:
        raise ValueError(f"k must be an integer in [1, {limit}], got {k!r}")
    with single_thread():
        u, s, vh = torch.linalg.svd(j, full_matrices=False)
    return [
        (u[i : i + 1, :, :k], s[i : i + 1, :k], vh[i : i + 1, :k, :].mT)
        for i in range(j.shape[0])
    ]


def geometric_step_cv(ratio: float, depth: int) -> float:
    """Coefficient of variation of the steps ``1, r, r^2, .., r^(L-1)``.

    When every block applies the same rank-one map ``J = sigma u v^T`` with
    ``tau = sigma v^T u``, the steps of every input along its line grow by
    the factor ``r = 1 + tau`` from one block to the next; this is the step
    CV that :func:`resalign.metrics.step_cv` then measures (population
    standard deviation over the mean).

    Parameters
    ----------
    ratio : float
        ``r > 0``.
    depth : int
        ``L >= 1``.

    Returns
    -------
    float
        ``>= 0``; ``0`` exactly when ``r = 1`` (equal steps) or ``L = 1``.
    """
    r = _nonnegative(ratio, "ratio", strict=True)
    L = _positive_int(depth, "depth", 1)
    steps = r ** np.arange(L, dtype=np.float64)
    return float(steps.std() / steps.mean())


def measure_ujm(
    X: object,
    y: object,
    result: UJMResult,
    *,
    k: int | None = None,
    rank_rtol: float = 1e-2,
    seed: int = 0,
) -> Report:
    """All RA measurements of a fitted UJM, as a :class:`~resalign.Report`.

    The report holds the same entries as one from
    :func:`resalign.measurement.measure` (so the figures of
    :mod:`resalign.plots` draw it), with one set of spectra per block
    (``N = 1``, since every input has the same Jacobian) and the paths of
    every input in ``X``. Neural Collapse is measured on ``h_L`` with ``W``.

    Parameters
    ----------
    X, y : arrays of shapes (N, d) and (N,)
        Features and labels (those of the fit, or others).
    result : UJMResult
        The fitted model.
    k : int, optional
        Singular triplets per block; default ``d``. Must exceed ``C``.
    rank_rtol : float, default 1e-2
        Relative tolerance of the numerical rank.
    seed : int, default 0
        Seed of the random-basis baseline of the coupling.

    Returns
    -------
    Report
    """
    x = _features(X)
    labels = torch.as_tensor(y).detach().cpu().to(torch.int64)
    c = int(result.W.shape[0])
    k = int(result.Js.shape[1]) if k is None else k
    if k <= c:
        raise ValueError(f"k={k} must exceed the number of classes C={c} for RA3")
    hs = representations(x, result.Js)
    report = Report(list(hs), spectra_of(result.Js, k), labels, c)
    with single_thread():
        measurement._fill_ra1(report)
        measurement._fill_ra2(report, seed)
        measurement._fill_ra3(report, rank_rtol)
        measurement._fill_ra4(report)
        report.nc = metrics.neural_collapse(hs[-1], labels, result.W, num_classes=c)
    return report
