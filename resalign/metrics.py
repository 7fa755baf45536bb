"""Scalar and matrix measurements of Residual Alignment and Neural Collapse.

Every function is pure: it takes arrays (torch tensors on any device, or
numpy arrays), computes in float64 on the device of its main input and returns
plain Python floats or numpy arrays (:func:`alignment_matrix` returns the kind
it was given). Nothing here runs a model or touches files.

Inputs follow ``CONTRACT.md``:

- representations ``hs`` of shape ``(L+1, N, D)``: ``h_0 .. h_L`` of ``N``
  inputs, flattened;
- top-k singular triplets of a Residual Jacobian as ``U (N, d_out, k)``,
  ``S (N, k)`` (descending) and ``V (N, d_in, k)``.

Groups of functions:

- RA1 (the path ``h_0 .. h_L`` is a line with equal steps):
  :func:`line_shape_score`, :func:`step_cv`, :func:`principal_share`;
- RA2 (singular vectors align across depth): :func:`alignment_matrix`,
  :func:`coupling`, :func:`off_diagonal_ratio`, :func:`alignment_grid`,
  :func:`coupling_grid`, :func:`random_coupling_grid`,
  :func:`summarize_coupling`;
- RA3 (low rank): :func:`singular_gap`, :func:`numerical_rank`,
  :func:`largest_gap_index`;
- RA4 (top singular value scales like ``1/L``): :func:`inverse_sigma_fit`,
  :func:`depth_scaling`;
- Neural Collapse: :func:`neural_collapse`.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch

__all__ = [
    "alignment_grid",
    "alignment_matrix",
    "coupling",
    "coupling_grid",
    "depth_scaling",
    "inverse_sigma_fit",
    "largest_gap_index",
    "line_shape_score",
    "neural_collapse",
    "numerical_rank",
    "off_diagonal_ratio",
    "principal_share",
    "random_coupling_grid",
    "singular_gap",
    "step_cv",
    "summarize_coupling",
]

ArrayLike = Any  # torch.Tensor | np.ndarray | nested sequences of numbers
Spectrum = tuple[ArrayLike, ArrayLike, ArrayLike]

_EPS = float(np.finfo(np.float64).eps)


# ----------------------------------------------------------------------------
# Conversions
# ----------------------------------------------------------------------------


def _f64(x: ArrayLike, device: torch.device | None = None) -> torch.Tensor:
    """Return ``x`` as a float64 tensor (on ``device``, else on its own)."""
    if isinstance(x, torch.Tensor):
        return x.detach().to(device=device or x.device, dtype=torch.float64)
    return torch.as_tensor(np.asarray(x, dtype=np.float64), device=device)


def _np(x: torch.Tensor) -> np.ndarray:
    return x.detach().cpu().numpy()


def _device(*xs: ArrayLike) -> torch.device | None:
    """Device of the first tensor among ``xs`` (``None`` if there is none)."""
    for x in xs:
        if isinstance(x, torch.Tensor):
            return x.device
    return None


# ----------------------------------------------------------------------------
# RA1: representations on a line, equally spaced
# ----------------------------------------------------------------------------


def _path(hs: ArrayLike) -> torch.Tensor:
    h = _f64(hs)
    if h.ndim < 3:
        raise ValueError(f"hs must have shape (L+1, N, D), got {tuple(h.shape)}")
    if h.shape[0] < 2:
        raise ValueError("hs needs at least two representations (L >= 1)")
    return h.reshape(h.shape[0], h.shape[1], -1)


def _step_lengths(h: torch.Tensor) -> torch.Tensor:
    return torch.linalg.vector_norm(h[1:] - h[:-1], dim=-1)  # (L, N)


def line_shape_score(hs: ArrayLike) -> np.ndarray:
    """Line-shape score (Gai and Zhang) of the path ``h_0 .. h_L`` of each input.

    ``LSS = sum_l |h_{l+1} - h_l| / |h_L - h_0|``: the length of the path over
    the distance between its end points.

    Parameters
    ----------
    hs : array of shape (L+1, N, D)
        Representations of ``N`` inputs after the stem and every block. Extra
        trailing dimensions are flattened.

    Returns
    -------
    numpy.ndarray of shape (N,)
        Range ``[1, inf)``. ``1`` means RA1's line shape: the points lie on a
        straight segment, visited in order. Larger values mean a curved or
        back-tracking path. ``inf`` if ``h_L = h_0`` with a non-zero path,
        ``nan`` if the input does not move at all.
    """
    h = _path(hs)
    length = _step_lengths(h).sum(dim=0)
    chord = torch.linalg.vector_norm(h[-1] - h[0], dim=-1)
    return _np(length / chord)


def step_cv(hs: ArrayLike) -> np.ndarray:
    """Coefficient of variation of the step lengths ``|h_{l+1} - h_l|``.

    The standard deviation (population, ``ddof=0``) of the ``L`` step lengths
    of one input divided by their mean.

    Parameters
    ----------
    hs : array of shape (L+1, N, D)
        Representations of ``N`` inputs; extra trailing dimensions are
        flattened.

    Returns
    -------
    numpy.ndarray of shape (N,)
        Range ``[0, sqrt(L-1)]``. ``0`` means equally spaced points (RA1's
        equal steps); larger values mean uneven steps. ``nan`` for an input
        whose representations never move.
    """
    steps = _step_lengths(_path(hs))
    mean = steps.mean(dim=0)
    std = steps.std(dim=0, correction=0)
    return _np(std / mean)


def principal_share(hs: ArrayLike) -> np.ndarray:
    """Share of the variance of the path points on their first principal axis.

    The ``L+1`` points ``h_0 .. h_L`` of one input are centred on their own
    mean (ordinary PCA; the same as centring ``{h_l - h_0}``, since a shift
    does not change the spread) and the largest eigenvalue of their scatter
    is divided by its trace. Computed from the ``(L+1) x (L+1)`` Gram matrix
    of each input (centred there) with one batched symmetric eigensolver, so
    ``D`` enters only through forming the Gram matrices.

    Parameters
    ----------
    hs : array of shape (L+1, N, D)
        Representations of ``N`` inputs; extra trailing dimensions are
        flattened.

    Returns
    -------
    numpy.ndarray of shape (N,)
        Range ``[1/min(L, D), 1]``. ``1`` means every point lies on one line
        (RA1). It ignores order and spacing: combine with
        :func:`line_shape_score` and :func:`step_cv`. ``nan`` if all points
        coincide.
    """
    h = _path(hs)
    n_points = h.shape[0]
    raw = torch.einsum("lnd,mnd->nlm", h, h)  # (N, L+1, L+1)
    # Centre in the small space: P G P with P = I - 11^T/(L+1).
    proj = torch.eye(n_points, dtype=h.dtype, device=h.device) - 1.0 / n_points
    gram = proj @ raw @ proj
    top = torch.linalg.eigvalsh(gram)[..., -1]
    total = torch.diagonal(gram, dim1=-2, dim2=-1).sum(dim=-1)
    return _np(top / total)


# ----------------------------------------------------------------------------
# RA2: alignment of singular vectors across blocks
# ----------------------------------------------------------------------------


def _check_spectrum(
    u: torch.Tensor, s: torch.Tensor, v: torch.Tensor, name: str
) -> None:
    if u.ndim != 3 or s.ndim != 2 or v.ndim != 3:
        raise ValueError(
            f"{name}: expected U (N, d_out, k), S (N, k), V (N, d_in, k); got "
            f"{tuple(u.shape)}, {tuple(s.shape)}, {tuple(v.shape)}"
        )
    n, _, k = u.shape
    if s.shape != (n, k) or v.shape[0] != n or v.shape[2] != k:
        raise ValueError(
            f"{name}: inconsistent shapes U {tuple(u.shape)}, S {tuple(s.shape)}, "
            f"V {tuple(v.shape)}"
        )


def _resolve_k(k: int | None, available: int) -> int:
    if k is None:
        return available
    if not 1 <= int(k) <= available:
        raise ValueError(f"K must lie in [1, {available}], got {k}")
    return int(k)


def _aligned(
    ui: torch.Tensor,
    si: torch.Tensor,
    vi: torch.Tensor,
    uj: torch.Tensor,
    vj: torch.Tensor,
) -> torch.Tensor:
    """``|U_j^T (U_i diag(S_i) V_i^T) V_j|``, batched over leading dims of U_j."""
    left = uj.transpose(-1, -2) @ ui  # (..., N, K, k_i)
    right = vi.transpose(-1, -2) @ vj  # (..., N, k_i, K)
    return ((left * si.unsqueeze(-2)) @ right).abs()


def _coupling_from(a: torch.Tensor, s_top: torch.Tensor) -> torch.Tensor:
    diff = a - torch.diag_embed(s_top)
    return torch.linalg.matrix_norm(diff) / torch.linalg.vector_norm(s_top, dim=-1)


def _pair_inputs(
    Ui: ArrayLike,
    Si: ArrayLike,
    Vi: ArrayLike,
    Uj: ArrayLike,
    Vj: ArrayLike,
    K: int | None,
) -> tuple[torch.Tensor, ...]:
    dev = _device(Ui, Si, Vi, Uj, Vj) or torch.device("cpu")
    ui, si, vi = _f64(Ui, dev), _f64(Si, dev), _f64(Vi, dev)
    uj, vj = _f64(Uj, dev), _f64(Vj, dev)
    _check_spectrum(ui, si, vi, "block i")
    if uj.ndim != 3 or vj.ndim != 3 or uj.shape[2] != vj.shape[2]:
        raise ValueError(
            f"block j: expected U (N, d_out, k), V (N, d_in, k); got "
            f"{tuple(uj.shape)}, {tuple(vj.shape)}"
        )
    if uj.shape[:2] != ui.shape[:2] or vj.shape[:2] != vi.shape[:2]:
        raise ValueError(
            "blocks i and j must have the same number of inputs and the same "
            f"Jacobian shape; got U_i {tuple(ui.shape)}, V_i {tuple(vi.shape)}, "
            f"U_j {tuple(uj.shape)}, V_j {tuple(vj.shape)}"
        )
    k = _resolve_k(K, min(uj.shape[2], si.shape[1]))
    return ui, si, vi, uj[..., :k], vj[..., :k], si[:, :k]


def alignment_matrix(
    Ui: ArrayLike,
    Si: ArrayLike,
    Vi: ArrayLike,
    Uj: ArrayLike,
    Vj: ArrayLike,
    K: int | None = None,
) -> torch.Tensor | np.ndarray:
    """The matrix ``|U_j^T J_i V_j|`` over the top ``K`` singular vectors of J_j.

    ``J_i`` is represented by its top-k truncation ``U_i diag(S_i) V_i^T``
    (all ``k_i`` triplets given), so components of ``J_i`` beyond the ``k_i``
    computed ones are missing; with a fast-decaying spectrum this is a small
    error. The product is evaluated as ``(U_j^T U_i) diag(S_i) (V_i^T V_j)``
    without forming any Jacobian. Absolute values make the result
    independent of the signs of singular vector pairs.

    Parameters
    ----------
    Ui, Si, Vi : arrays of shapes (N, d_out, k_i), (N, k_i), (N, d_in, k_i)
        Top singular triplets of block ``i``'s Residual Jacobians.
    Uj, Vj : arrays of shapes (N, d_out, k_j), (N, d_in, k_j)
        Singular vectors of block ``j`` (same Jacobian shape as block ``i``).
    K : int, optional
        Number of top vectors of block ``j`` to use; default
        ``min(k_i, k_j)``.

    Returns
    -------
    torch.Tensor or numpy.ndarray of shape (N, K, K)
        Float64; a tensor if ``Ui`` is a tensor, else a numpy array. It is
        computed on the device of the first tensor among the inputs. Entries
        are ``>= 0``. Under RA2 it is close to ``diag(S_i[:K])``: nearly
        diagonal, with block ``i``'s singular values on the diagonal.
    """
    ui, si, vi, uj, vj, _ = _pair_inputs(Ui, Si, Vi, Uj, Vj, K)
    out = _aligned(ui, si, vi, uj, vj)
    return out if isinstance(Ui, torch.Tensor) else _np(out)


def coupling(
    Ui: ArrayLike,
    Si: ArrayLike,
    Vi: ArrayLike,
    Uj: ArrayLike,
    Vj: ArrayLike,
    K: int | None = None,
) -> np.ndarray:
    """Coupling ``m(i, j)``: distance of ``|U_j^T J_i V_j|`` from ``diag(S_i)``.

    ``m(i, j) = || |U_j^T J_i V_j| - diag(S_i) ||_F / ||S_i||_F`` over the top
    ``K`` singular values and vectors, with ``J_i`` represented by its top-k
    truncation as in :func:`alignment_matrix`.

    Parameters
    ----------
    Ui, Si, Vi : arrays of shapes (N, d_out, k_i), (N, k_i), (N, d_in, k_i)
        Top singular triplets of block ``i``.
    Uj, Vj : arrays of shapes (N, d_out, k_j), (N, d_in, k_j)
        Singular vectors of block ``j``.
    K : int, optional
        Number of top components; default ``min(k_i, k_j)``.

    Returns
    -------
    numpy.ndarray of shape (N,)
        ``>= 0``; ``0`` means perfect alignment (RA2): block ``j``'s singular
        vectors diagonalise ``J_i`` with ``J_i``'s own singular values. For
        unrelated Jacobians it is of order 1 (compare with
        :func:`random_coupling_grid`); it can exceed 1.
    """
    ui, si, vi, uj, vj, s_top = _pair_inputs(Ui, Si, Vi, Uj, Vj, K)
    return _np(_coupling_from(_aligned(ui, si, vi, uj, vj), s_top))


def off_diagonal_ratio(M: ArrayLike) -> np.ndarray:
    """Off-diagonal mass over diagonal mass of ``|M|``.

    Mass is the sum of absolute values (an L1 mass).

    Parameters
    ----------
    M : array of shape (..., K, K)
        For example the output of :func:`alignment_matrix`.

    Returns
    -------
    numpy.ndarray of shape (...)
        Range ``[0, inf)``. ``0`` means ``M`` is diagonal (RA2); a dense
        matrix with entries of equal size gives ``K - 1``. ``inf`` (or
        ``nan`` for a zero matrix) if the diagonal vanishes.
    """
    m = _f64(M).abs()
    if m.ndim < 2 or m.shape[-1] != m.shape[-2]:
        raise ValueError(f"M must have shape (..., K, K), got {tuple(m.shape)}")
    diag = torch.diagonal(m, dim1=-2, dim2=-1).sum(dim=-1)
    total = m.sum(dim=(-2, -1))
    return _np((total - diag) / diag)


def _spectra(
    spectra: Sequence[Spectrum],
) -> tuple[list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]], torch.device]:
    if len(spectra) == 0:
        raise ValueError("spectra is empty")
    tensors = [t for triple in spectra for t in triple]
    dev = _device(*tensors) or torch.device("cpu")
    # float32 spectra (the models') are compared in float32: 4x faster batched
    # products, and rounding (1e-7) far below any threshold; else float64
    single = all(
        isinstance(t, torch.Tensor) and t.dtype == torch.float32 for t in tensors
    )
    out = []
    for idx, triple in enumerate(spectra):
        if len(triple) != 3:
            raise ValueError(f"spectra[{idx}] must be a (U, S, V) triple")
        u, s, v = (_f64(t, dev) for t in triple)
        if single:
            u, s, v = u.float(), s.float(), v.float()
        _check_spectrum(u, s, v, f"spectra[{idx}]")
        out.append((u, s, v))
    n = {u.shape[0] for u, _, _ in out}
    if len(n) != 1:
        raise ValueError(f"all blocks need the same number of inputs, got {n}")
    return out, dev


def _grid_rows(
    blocks: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]],
    bases: list[tuple[torch.Tensor, torch.Tensor]],
    k: int,
) -> Iterator[tuple[int, list[int], torch.Tensor]]:
    """Yield ``(i, js, |U_j^T J_i V_j|)`` for every block ``i``.

    The third item is batched over the ``g`` blocks ``js`` whose Jacobians
    have the same shape as block ``i``: shape ``(g, N, K, K)``.

    Within a group of equal shapes, all products ``B_j^T U_i`` and
    ``V_i^T C_j`` (``B_j, C_j`` the bases of block ``j``, ``K`` columns) come
    from two batched matrix products of the concatenated vectors, so the
    large ``(N, d, k)`` arrays are read once rather than once per pair.
    """
    shape = [(u.shape[1], v.shape[1]) for u, _, v in blocks]
    for group_shape in dict.fromkeys(shape):
        js = [j for j in range(len(blocks)) if shape[j] == group_shape]
        g = len(js)
        n = blocks[js[0]][0].shape[0]
        u_cat = torch.cat([blocks[i][0] for i in js], dim=-1)  # (N, d_out, sum k)
        v_cat = torch.cat([blocks[i][2] for i in js], dim=-1)  # (N, d_in, sum k)
        own = all(
            bases[j][0] is blocks[j][0]
            and bases[j][1] is blocks[j][2]
            and blocks[j][1].shape[1] == k
            for j in js
        )
        if own:  # the blocks' own K vectors: reuse the concatenation
            bu_cat, bv_cat = u_cat, v_cat
        else:
            bu_cat = torch.cat([bases[j][0][..., :k] for j in js], dim=-1)
            bv_cat = torch.cat([bases[j][1][..., :k] for j in js], dim=-1)
        left_all = bu_cat.mT @ u_cat  # (N, gK, sum k)
        right_all = v_cat.mT @ bv_cat  # (N, sum k, gK)
        offset = 0
        for i in js:
            si = blocks[i][1]
            ki = si.shape[1]
            cols = slice(offset, offset + ki)
            offset += ki
            left = left_all[:, :, cols].reshape(n, g, k, ki).transpose(0, 1)
            right = right_all[:, cols, :].reshape(n, ki, g, k).permute(2, 0, 1, 3)
            yield i, js, ((left * si.unsqueeze(-2)) @ right).abs()  # (g, N, K, K)


def _common_k(blocks: list[tuple[torch.Tensor, ...]], K: int | None) -> int:
    return _resolve_k(K, min(s.shape[1] for _, s, _ in blocks))


def _coupling_grid(
    blocks: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]],
    bases: list[tuple[torch.Tensor, torch.Tensor]],
    k: int,
    dev: torch.device,
) -> np.ndarray:
    n_blocks = len(blocks)
    grid = torch.full((n_blocks, n_blocks), float("nan"), dtype=torch.float64)
    grid = grid.to(dev)
    for i, js, a in _grid_rows(blocks, bases, k):
        s_top = blocks[i][1][:, :k]
        grid[i, js] = _coupling_from(a, s_top).mean(dim=1).to(grid.dtype)
    return _np(grid)


def coupling_grid(spectra: Sequence[Spectrum], K: int | None = None) -> np.ndarray:
    """Mean coupling :func:`coupling` between every pair of blocks.

    Parameters
    ----------
    spectra : sequence of L triples (U, S, V)
        Top singular triplets of each block, shapes as in
        :func:`alignment_matrix`, all for the same ``N`` inputs.
    K : int, optional
        Number of top components, the same for all pairs; default the
        smallest ``k`` among the blocks.

    Returns
    -------
    numpy.ndarray of shape (L, L)
        Entry ``(i, j)`` is the mean over inputs of ``m(i, j)`` (``J_i`` seen
        in block ``j``'s singular bases). ``>= 0``; ``0`` means RA2. The
        diagonal is ``0`` up to rounding. ``nan`` where blocks ``i`` and
        ``j`` have Jacobians of different shapes (downsampling blocks are not
        compared across shapes).
    """
    blocks, dev = _spectra(spectra)
    k = _common_k(blocks, K)
    bases = [(u, v) for u, _, v in blocks]
    return _coupling_grid(blocks, bases, k, dev)


def alignment_grid(spectra: Sequence[Spectrum], K: int | None = None) -> np.ndarray:
    """Mean ``|U_j^T J_i V_j|`` for every pair of blocks, for plotting.

    Parameters
    ----------
    spectra : sequence of L triples (U, S, V)
        Top singular triplets of each block, as in :func:`coupling_grid`.
    K : int, optional
        Number of top components; default the smallest ``k`` among blocks.

    Returns
    -------
    numpy.ndarray of shape (L, L, K, K)
        Panel ``(i, j)`` is the mean over inputs of :func:`alignment_matrix`
        of blocks ``i`` and ``j``; entries ``>= 0``. Under RA2 every panel is
        nearly diagonal. Panels of blocks with different Jacobian shapes are
        ``nan``.
    """
    blocks, dev = _spectra(spectra)
    k = _common_k(blocks, K)
    bases = [(u, v) for u, _, v in blocks]
    n_blocks = len(blocks)
    grid = torch.full((n_blocks, n_blocks, k, k), float("nan"), dtype=torch.float64)
    grid = grid.to(dev)
    for i, js, a in _grid_rows(blocks, bases, k):
        grid[i, js] = a.mean(dim=1).to(grid.dtype)
    return _np(grid)


def _random_basis(
    n: int,
    d: int,
    k: int,
    gen: torch.Generator,
    dev: torch.device,
    dtype: torch.dtype = torch.float64,
) -> torch.Tensor:
    """``n`` random orthonormal ``k``-frames in ``R^d``, uniformly distributed.

    Each is the Q factor of the QR decomposition of a Gaussian ``(d, k)``
    matrix, computed by CholeskyQR2 (two passes of ``G^T G = R^T R``,
    ``G <- G R^-1``, with ``R^-1`` a small ``k x k`` triangular inverse): the
    same Q as Householder QR with a positive diagonal of R, much faster for
    tall batched matrices, and accurate because Gaussian matrices are well
    conditioned.
    """
    q = torch.randn(n, d, k, generator=gen, dtype=dtype).to(dev)
    eye = torch.eye(k, dtype=q.dtype, device=q.device)
    for _ in range(2):
        low = torch.linalg.cholesky(q.mT @ q)  # q^T q = low low^T
        q = q @ torch.linalg.solve_triangular(low, eye, upper=False).mT
    return q


def random_coupling_grid(
    spectra: Sequence[Spectrum], K: int | None = None, seed: int = 0
) -> np.ndarray:
    """Coupling grid with random orthonormal bases: the null baseline for RA2.

    As :func:`coupling_grid`, but block ``j``'s singular vectors ``U_j`` and
    ``V_j`` are replaced by random orthonormal ``K``-frames (QR of Gaussian
    matrices, drawn independently per block and input from a CPU generator
    seeded with ``seed``, so the result does not depend on the device).

    Parameters
    ----------
    spectra : sequence of L triples (U, S, V)
        Top singular triplets of each block.
    K : int, optional
        Number of components; default the smallest ``k`` among blocks.
    seed : int
        Seed of the random bases.

    Returns
    -------
    numpy.ndarray of shape (L, L)
        Mean coupling of ``J_i`` in random bases of block ``j``'s shape: the
        value expected without any alignment (diagonal included). Measured
        couplings near this value mean no RA2. ``nan`` where shapes differ.
    """
    blocks, dev = _spectra(spectra)
    k = _common_k(blocks, K)
    shapes = tuple((u.shape[0], u.shape[1], v.shape[1]) for u, _, v in blocks)
    bases = _random_bases(shapes, k, int(seed), blocks[0][0].dtype, dev)
    return _coupling_grid(blocks, bases, k, dev)


#: The last random bases drawn, keyed by everything that determines them.
_BASES_CACHE: dict[tuple, list[tuple[torch.Tensor, torch.Tensor]]] = {}
_BASES_CACHE_BYTES = 64 * 2**20


def _random_bases(
    shapes: tuple[tuple[int, int, int], ...],
    k: int,
    seed: int,
    dtype: torch.dtype,
    dev: torch.device,
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Random ``(B_j, C_j)`` frames for blocks of ``(N, d_out, d_in)`` shapes.

    They depend only on the shapes, ``k``, the seed, dtype and device, so the
    last set drawn is kept (when under 64 MiB) and reused: measuring many
    models of one architecture, or one model during training, draws them once.
    They are only read, never written, by the grid computations.
    """
    key = (shapes, k, seed, dtype, str(dev))
    if key in _BASES_CACHE:
        return _BASES_CACHE[key]
    gen = torch.Generator().manual_seed(seed)
    bases = [
        (
            _random_basis(n, d_out, k, gen, dev, dtype),
            _random_basis(n, d_in, k, gen, dev, dtype),
        )
        for n, d_out, d_in in shapes
    ]
    size = sum(t.numel() * t.element_size() for pair in bases for t in pair)
    if size <= _BASES_CACHE_BYTES:
        _BASES_CACHE.clear()
        _BASES_CACHE[key] = bases
    return bases


def summarize_coupling(grid: ArrayLike) -> float:
    """Mean of the finite off-diagonal entries of an ``(L, L)`` coupling grid.

    Parameters
    ----------
    grid : array of shape (L, L)
        Output of :func:`coupling_grid` or :func:`random_coupling_grid`.

    Returns
    -------
    float
        ``>= 0``; ``0`` means all distinct blocks are aligned (RA2). ``nan``
        if no off-diagonal entry is finite (e.g. ``L = 1``).
    """
    g = np.asarray(_np(_f64(grid)))
    if g.ndim != 2 or g.shape[0] != g.shape[1]:
        raise ValueError(f"grid must be square (L, L), got {g.shape}")
    off = g[~np.eye(g.shape[0], dtype=bool)]
    off = off[np.isfinite(off)]
    return float(off.mean()) if off.size else float("nan")


# ----------------------------------------------------------------------------
# RA3: low rank of the Residual Jacobians
# ----------------------------------------------------------------------------


def _spectrum_values(S: ArrayLike) -> torch.Tensor:
    s = _f64(S)
    if s.ndim < 1:
        raise ValueError("S must have shape (..., k)")
    return s


def _input_eps(x: ArrayLike) -> float:
    """Machine epsilon of the floating dtype of ``x`` (float64 otherwise)."""
    if isinstance(x, torch.Tensor):
        return torch.finfo(x.dtype).eps if x.is_floating_point() else _EPS
    dtype = np.asarray(x).dtype
    return float(np.finfo(dtype).eps) if np.issubdtype(dtype, np.floating) else _EPS


def singular_gap(S: ArrayLike, C: int) -> np.ndarray:
    """Ratio ``sigma_{C+1} / sigma_C`` (1-based) of each spectrum.

    Parameters
    ----------
    S : array of shape (..., k)
        Singular values in descending order, e.g. ``(N, k)``.
    C : int
        Position of the expected gap, usually the number of classes. A trial
        on MNIST found the drop after the ``(C-1)``-th value, so also look at
        :func:`numerical_rank` and :func:`largest_gap_index`.

    Returns
    -------
    numpy.ndarray of shape (...)
        Range ``[0, 1]`` for a descending spectrum. Near ``0`` means a sharp
        drop after the ``C``-th value (RA3's rank ``<= C`` with a full top
        ``C``); near ``1`` means no gap there.

    Raises
    ------
    ValueError
        If ``C < 1`` or ``k <= C`` (the ``(C+1)``-th value is not available).
    """
    s = _spectrum_values(S)
    c = int(C)
    if c < 1:
        raise ValueError(f"C must be >= 1, got {C}")
    if s.shape[-1] <= c:
        raise ValueError(f"need k > C singular values, got k={s.shape[-1]}, C={c}")
    return _np(s[..., c] / s[..., c - 1])


def numerical_rank(S: ArrayLike, rtol: float = 1e-2) -> np.ndarray:
    """Number of singular values above ``rtol`` times the largest one.

    The threshold is relative to the top value ``sigma_1`` of each spectrum,
    so the count does not depend on the scale of the Jacobian.

    Parameters
    ----------
    S : array of shape (..., k)
        Singular values (any order).
    rtol : float
        Relative threshold, in ``(0, 1)``.

    Returns
    -------
    numpy.ndarray of int64, shape (...)
        Range ``[0, k]`` (``0`` only for an all-zero spectrum). Under RA3 it
        is at most ``C`` (the number of classes) for FC ResNets. It cannot
        exceed ``k``: compute more than ``C`` values.
    """
    s = _spectrum_values(S)
    if not 0.0 < float(rtol) < 1.0:
        raise ValueError(f"rtol must lie in (0, 1), got {rtol}")
    top = s.amax(dim=-1, keepdim=True)
    return _np((s > rtol * top).sum(dim=-1)).astype(np.int64)


def largest_gap_index(S: ArrayLike) -> np.ndarray:
    """Where each spectrum drops most: 1-based ``r`` maximising ``s_r / s_{r+1}``.

    Denominators are floored at ``eps * sigma_1``, with ``eps`` the machine
    epsilon of the input's floating dtype (float64 for non-float input):
    values below it are round-off of an exactly low-rank matrix, and ratios
    between them (or to an exact zero) must not beat the true drop. Pass
    float32 spectra as float32, not upcast, so that their floor fits.

    Parameters
    ----------
    S : array of shape (..., k), k >= 2
        Singular values in descending order.

    Returns
    -------
    numpy.ndarray of int64, shape (...)
        Range ``[1, k-1]``. Under RA3 it is ``C`` or ``C - 1`` for ``C``
        classes (a trial on MNIST saw the drop after ``C - 1``). It is
        always defined, so check the size of the drop with
        :func:`singular_gap` before trusting it.
    """
    s = _spectrum_values(S)
    if s.shape[-1] < 2:
        raise ValueError("need at least two singular values")
    floor = _input_eps(S) * s.amax(dim=-1, keepdim=True)
    floor = floor.clamp_min(torch.finfo(s.dtype).tiny)
    ratio = s[..., :-1] / s[..., 1:].clamp_min(floor)
    return _np(ratio.argmax(dim=-1) + 1).astype(np.int64)


# ----------------------------------------------------------------------------
# RA4: top singular value against depth
# ----------------------------------------------------------------------------


def _vector(x: ArrayLike, name: str) -> np.ndarray:
    v = _np(_f64(x))
    if v.ndim != 1:
        raise ValueError(f"{name} must be one-dimensional, got shape {v.shape}")
    if not np.all(np.isfinite(v)):
        raise ValueError(f"{name} has non-finite entries")
    return v


def _line_fit(x: np.ndarray, y: np.ndarray) -> dict[str, float]:
    xm, ym = x.mean(), y.mean()
    sxx = float(((x - xm) ** 2).sum())
    if sxx == 0.0:
        raise ValueError("need at least two distinct x values to fit a line")
    slope = float(((x - xm) * (y - ym)).sum()) / sxx
    intercept = float(ym - slope * xm)
    ss_res = float(((y - (intercept + slope * x)) ** 2).sum())
    ss_tot = float(((y - ym) ** 2).sum())
    # A constant target is fitted exactly (slope 0): call that R^2 = 1.
    r2 = 1.0 if ss_tot == 0.0 else 1.0 - ss_res / ss_tot
    return {"slope": slope, "intercept": intercept, "r2": r2}


def inverse_sigma_fit(sigma1: ArrayLike) -> dict[str, float]:
    """Least-squares line of ``1/sigma_1`` against block index ``1 .. L``.

    Parameters
    ----------
    sigma1 : array of shape (L,), L >= 2
        Top singular value of each block (e.g. averaged over inputs), all
        positive.

    Returns
    -------
    dict
        ``slope``, ``intercept`` (of ``1/sigma_1 = intercept + slope * l``)
        and ``r2`` (coefficient of determination, ``<= 1``; ``1`` for a
        perfect fit, including a constant ``sigma_1``). Within one network,
        a slope near ``0`` means every block has the same ``sigma_1``, the
        even spread that RA4 predicts; how ``1/sigma_1`` grows with total
        depth is measured by :func:`depth_scaling`.
    """
    s = _vector(sigma1, "sigma1")
    if np.any(s <= 0):
        raise ValueError("sigma1 must be positive")
    x = np.arange(1, s.size + 1, dtype=np.float64)
    return _line_fit(x, 1.0 / s)


def depth_scaling(depths: ArrayLike, sigma1: ArrayLike) -> dict[str, float]:
    """Log-log fit of ``sigma_1`` against total depth ``L`` across networks.

    ``log sigma_1 = intercept + slope * log L`` by least squares.

    Parameters
    ----------
    depths : array of shape (M,)
        Number of blocks of each network (positive, at least two distinct).
    sigma1 : array of shape (M,)
        A representative top singular value of each network (e.g. the mean
        over blocks and inputs), positive.

    Returns
    -------
    dict
        ``slope``, ``intercept`` and ``r2`` of the log-log fit. A slope of
        ``-1`` means ``sigma_1 ~ 1/L`` (RA4); ``0`` means no dependence on
        depth. ``r2 <= 1``.
    """
    d = _vector(depths, "depths")
    s = _vector(sigma1, "sigma1")
    if d.shape != s.shape:
        raise ValueError(f"depths {d.shape} and sigma1 {s.shape} differ in shape")
    if np.any(d <= 0) or np.any(s <= 0):
        raise ValueError("depths and sigma1 must be positive")
    return _line_fit(np.log(d), np.log(s))


# ----------------------------------------------------------------------------
# Neural Collapse
# ----------------------------------------------------------------------------


def _labels(labels: ArrayLike, dev: torch.device, n: int, c: int) -> torch.Tensor:
    y = labels if isinstance(labels, torch.Tensor) else torch.as_tensor(labels)
    if y.is_floating_point() or y.is_complex() or y.dtype == torch.bool:
        raise ValueError(f"labels must be integers, got dtype {y.dtype}")
    y = y.to(device=dev, dtype=torch.int64)
    if y.shape != (n,):
        raise ValueError(f"labels must have shape ({n},), got {tuple(y.shape)}")
    if n and (int(y.min()) < 0 or int(y.max()) >= c):
        lo, hi = int(y.min()), int(y.max())
        raise ValueError(f"labels must lie in [0, {c}), got values in [{lo}, {hi}]")
    return y


def neural_collapse(
    features: ArrayLike,
    labels: ArrayLike,
    weight: ArrayLike,
    bias: ArrayLike | None = None,
    num_classes: int | None = None,
) -> dict[str, float]:
    """Neural Collapse measurements NC1-NC4 (Papyan, Han, Donoho 2020).

    With class means ``mu_c``, the global mean ``mu_G`` of all samples, the
    centred means ``M = [mu_c - mu_G]_c`` (rows in class order),
    ``Sigma_W`` the within-class covariance (average over all samples of
    ``(h - mu_y)(h - mu_y)^T``) and ``Sigma_B = M^T M / C``:

    - ``nc1 = Tr(Sigma_W Sigma_B^+) / C`` (Moore-Penrose pseudo-inverse,
      singular values of ``M`` below ``max(C, D) * eps`` times the largest
      dropped), computed through the thin SVD of ``M`` without forming any
      ``D x D`` matrix;
    - ``nc2_equinorm`` = std/mean (``ddof=0``) of the norms of the rows of M;
    - ``nc2_equiangle`` = mean over class pairs of
      ``|cos(mu_c - mu_G, mu_c' - mu_G) + 1/(C-1)|``;
    - ``nc3 = || W/||W||_F - M/||M||_F ||_F``;
    - ``nc4`` = fraction of samples where ``argmax(W h + b)`` differs from
      the nearest class mean (Euclidean).

    Parameters
    ----------
    features : array of shape (N, D)
        Last-layer features.
    labels : integer array of shape (N,)
        Classes in ``[0, C)``; every class must occur.
    weight : array of shape (C, D)
        Classifier weight.
    bias : array of shape (C,), optional
        Classifier bias (``None``: no bias).
    num_classes : int, optional
        ``C``; default ``weight.shape[0]``, and it must agree with it.

    Returns
    -------
    dict of float
        Every value is ``>= 0`` and ``0`` means exact Neural Collapse:
        ``nc1`` in ``[0, inf)`` (``nan`` if all class means coincide);
        ``nc2_equinorm`` in ``[0, sqrt(C-1)]``; ``nc2_equiangle`` in
        ``[0, C/(C-1)]`` (``0`` for a simplex equiangular tight frame);
        ``nc3`` in ``[0, 2]``; ``nc4`` in ``[0, 1]``.

    Raises
    ------
    ValueError
        On shape mismatches, ``C < 2``, labels that are not integers or lie
        outside ``[0, C)``, or a class without samples.
    """
    dev = _device(features, weight, labels)
    h = _f64(features, dev)
    if h.ndim != 2:
        raise ValueError(f"features must have shape (N, D), got {tuple(h.shape)}")
    n, d = h.shape
    if n == 0:
        raise ValueError("features is empty")
    w = _f64(weight, h.device)
    c = w.shape[0] if num_classes is None else int(num_classes)
    if w.ndim != 2 or w.shape != (c, d):
        raise ValueError(f"weight must have shape ({c}, {d}), got {tuple(w.shape)}")
    if c < 2:
        raise ValueError("Neural Collapse needs at least two classes")
    b = None if bias is None else _f64(bias, h.device)
    if b is not None and b.shape != (c,):
        raise ValueError(f"bias must have shape ({c},), got {tuple(b.shape)}")
    y = _labels(labels, h.device, n, c)

    counts = torch.bincount(y, minlength=c).to(torch.float64)
    if bool((counts == 0).any()):
        missing = torch.nonzero(counts == 0).flatten().tolist()
        raise ValueError(f"classes without samples: {missing}")
    means = torch.zeros(c, d, dtype=torch.float64, device=h.device)
    means.index_add_(0, y, h)
    means /= counts[:, None]
    glob = h.mean(dim=0)
    m = means - glob  # (C, D) centred class means

    # NC1: Tr(Sigma_W Sigma_B^+)/C = ||R V S^-1||_F^2 / N with M = U S V^T.
    _, s, vh = torch.linalg.svd(m, full_matrices=False)
    keep = s > max(c, d) * _EPS * s[0]
    if bool(keep.any()):
        resid = h - means[y]
        proj = (resid @ vh[keep].T) / s[keep]
        nc1 = float((proj**2).sum() / n)
    else:
        nc1 = float("nan")

    # NC2
    norms = torch.linalg.vector_norm(m, dim=1)
    equinorm = float(norms.std(correction=0) / norms.mean())
    unit = m / norms[:, None]
    cos = unit @ unit.T
    iu = torch.triu_indices(c, c, offset=1, device=h.device)
    equiangle = float((cos[iu[0], iu[1]] + 1.0 / (c - 1)).abs().mean())

    # NC3
    nc3 = float(
        torch.linalg.matrix_norm(
            w / torch.linalg.matrix_norm(w) - m / torch.linalg.matrix_norm(m)
        )
    )

    # NC4: argmin_c ||h - mu_c||^2 = argmin_c (||mu_c||^2 - 2 h . mu_c)
    logits = h @ w.T
    if b is not None:
        logits = logits + b
    ncc = ((means**2).sum(dim=1) - 2.0 * (h @ means.T)).argmin(dim=1)
    nc4 = float((logits.argmax(dim=1) != ncc).to(torch.float64).mean())

    return {
        "nc1": nc1,
        "nc2_equinorm": equinorm,
        "nc2_equiangle": equiangle,
        "nc3": nc3,
        "nc4": nc4,
    }
