"""Known-answer tests for resalign.metrics."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from resalign import metrics as mt

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _svd_triplets(
    jac: torch.Tensor, k: int | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Top-k triplets of a batch of Jacobians (N, d_out, d_in) per CONTRACT."""
    u, s, vh = torch.linalg.svd(jac, full_matrices=False)
    k = s.shape[-1] if k is None else k
    return u[..., :k], s[..., :k], vh.mT[..., :k]


# ----------------------------------------------------------------------------
# RA1
# ----------------------------------------------------------------------------


def _line_path(ts: torch.Tensor, n: int = 6, d: int = 10) -> torch.Tensor:
    """Points h_0 + t_l * v_n for positions ts, one direction v_n per input."""
    g = _gen(1)
    start = torch.randn(n, d, generator=g, dtype=torch.float64)
    direction = torch.randn(n, d, generator=g, dtype=torch.float64)
    return start + ts[:, None, None] * direction  # (L+1, N, D)


def test_straight_equispaced_path() -> None:
    hs = _line_path(torch.arange(9, dtype=torch.float64))
    np.testing.assert_allclose(mt.line_shape_score(hs), 1.0, atol=1e-12)
    np.testing.assert_allclose(mt.step_cv(hs), 0.0, atol=1e-12)
    np.testing.assert_allclose(mt.principal_share(hs), 1.0, atol=1e-12)
    assert mt.line_shape_score(hs).shape == (6,)


def test_unequal_steps_on_a_line() -> None:
    hs = _line_path(torch.tensor([0.0, 0.1, 0.5, 0.6, 2.0, 5.0], dtype=torch.float64))
    np.testing.assert_allclose(mt.line_shape_score(hs), 1.0, atol=1e-12)
    assert np.all(mt.step_cv(hs) > 0.3)
    np.testing.assert_allclose(mt.principal_share(hs), 1.0, atol=1e-12)


def test_zigzag_path() -> None:
    # Alternate between two parallel lines: progress along x, jump along y.
    n_points = 9
    x = torch.arange(n_points, dtype=torch.float64)
    y = (torch.arange(n_points) % 2).to(torch.float64)
    hs = torch.stack([x, y], dim=-1)[:, None, :]  # (L+1, 1, 2)
    lss = mt.line_shape_score(hs)
    np.testing.assert_allclose(lss, 8 * math.sqrt(2) / 8, rtol=1e-12)
    np.testing.assert_allclose(mt.step_cv(hs), 0.0, atol=1e-12)  # equal steps
    assert mt.principal_share(hs)[0] < 0.99


def test_backtracking_path_is_not_monotone() -> None:
    hs = _line_path(torch.tensor([0.0, 1.0, 2.0, 1.0, 3.0], dtype=torch.float64))
    np.testing.assert_allclose(mt.line_shape_score(hs), 5.0 / 3.0, rtol=1e-12)
    np.testing.assert_allclose(mt.principal_share(hs), 1.0, atol=1e-12)


def test_ra1_accepts_numpy_float32_and_trailing_dims() -> None:
    hs = _line_path(torch.arange(5, dtype=torch.float64), n=3, d=12)
    ref = mt.line_shape_score(hs)
    as_np32 = hs.numpy().astype(np.float32)
    np.testing.assert_allclose(mt.line_shape_score(as_np32), ref, atol=1e-5)
    conv = hs.reshape(5, 3, 3, 2, 2).float()
    np.testing.assert_allclose(mt.line_shape_score(conv), ref, atol=1e-5)
    np.testing.assert_allclose(mt.principal_share(conv), 1.0, atol=1e-5)
    assert mt.step_cv(as_np32).dtype == np.float64


def test_random_path_scores() -> None:
    hs = torch.randn(9, 50, 30, generator=_gen(2), dtype=torch.float64)
    assert np.all(mt.line_shape_score(hs) > 2.0)
    assert np.all(mt.principal_share(hs) < 0.6)


@pytest.mark.parametrize("shape", [(5, 4), (1, 3, 4), (4,)])
def test_ra1_bad_shapes(shape: tuple[int, ...]) -> None:
    with pytest.raises(ValueError):
        mt.line_shape_score(torch.zeros(shape))


# ----------------------------------------------------------------------------
# RA2
# ----------------------------------------------------------------------------


def _aligned_spectra(n_blocks: int, n: int = 4, d: int = 12, k: int = 6):
    """J_l = A/L for every block (the same A per input)."""
    a = torch.randn(n, d, d, generator=_gen(3), dtype=torch.float64)
    return [_svd_triplets(a / n_blocks, k) for _ in range(n_blocks)]


def _random_spectra(n_blocks: int, n: int = 8, d: int = 16, k: int = 8):
    g = _gen(4)
    return [
        _svd_triplets(torch.randn(n, d, d, generator=g, dtype=torch.float64), k)
        for _ in range(n_blocks)
    ]


def test_alignment_matrix_matches_dense_product() -> None:
    g = _gen(5)
    ji = torch.randn(3, 7, 5, generator=g, dtype=torch.float64)
    jj = torch.randn(3, 7, 5, generator=g, dtype=torch.float64)
    ui, si, vi = _svd_triplets(ji)  # full rank: truncation is exact
    uj, _, vj = _svd_triplets(jj)
    expected = (uj[..., :4].mT @ ji @ vj[..., :4]).abs()
    got = mt.alignment_matrix(ui, si, vi, uj, vj, K=4)
    assert isinstance(got, torch.Tensor) and got.shape == (3, 4, 4)
    torch.testing.assert_close(got, expected)
    got_np = mt.alignment_matrix(ui.numpy(), si.numpy(), vi.numpy(), uj, vj, K=4)
    assert isinstance(got_np, np.ndarray)
    np.testing.assert_allclose(got_np, expected.numpy(), atol=1e-12)


def test_aligned_blocks_have_zero_coupling() -> None:
    spectra = _aligned_spectra(4)
    grid = mt.coupling_grid(spectra)
    assert grid.shape == (4, 4)
    np.testing.assert_allclose(grid, 0.0, atol=1e-10)
    assert mt.summarize_coupling(grid) < 1e-10
    (ui, si, vi), (uj, _, vj) = spectra[0], spectra[2]
    np.testing.assert_allclose(mt.coupling(ui, si, vi, uj, vj), 0.0, atol=1e-10)
    mat = mt.alignment_matrix(ui, si, vi, uj, vj)
    np.testing.assert_allclose(mt.off_diagonal_ratio(mat), 0.0, atol=1e-10)
    panels = mt.alignment_grid(spectra, K=3)
    assert panels.shape == (4, 4, 3, 3)
    expected = torch.diag_embed(si[:, :3]).mean(0).numpy()
    np.testing.assert_allclose(panels[1, 3], expected, atol=1e-12)


def test_coupling_ignores_sign_flips_of_pairs() -> None:
    (ui, si, vi), (uj, _, vj) = _aligned_spectra(2)
    flip = torch.tensor([1.0, -1.0, 1.0, -1.0, -1.0, 1.0], dtype=torch.float64)
    c = mt.coupling(ui, si, vi, uj * flip, vj * flip)
    np.testing.assert_allclose(c, 0.0, atol=1e-10)


def test_independent_random_jacobians_are_not_aligned() -> None:
    spectra = _random_spectra(4)
    grid = mt.coupling_grid(spectra)
    null = mt.random_coupling_grid(spectra, seed=1)
    off = ~np.eye(4, dtype=bool)
    assert np.all(grid[off] > 0.5)
    np.testing.assert_allclose(np.diag(grid), 0.0, atol=1e-10)
    measured, baseline = mt.summarize_coupling(grid), mt.summarize_coupling(null)
    assert baseline > 0.5
    assert abs(measured - baseline) < 0.1 * baseline
    (ui, si, vi), (uj, _, vj) = spectra[0], spectra[1]
    assert np.all(mt.off_diagonal_ratio(mt.alignment_matrix(ui, si, vi, uj, vj)) > 1)


def test_random_grid_is_seeded() -> None:
    spectra = _aligned_spectra(3)
    a = mt.random_coupling_grid(spectra, seed=7)
    b = mt.random_coupling_grid(spectra, seed=7)
    c = mt.random_coupling_grid(spectra, seed=8)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    assert np.all(a > 0.5)  # random bases do not diagonalise aligned blocks


def test_grid_nan_across_shapes() -> None:
    g = _gen(6)
    square = [
        _svd_triplets(torch.randn(3, 8, 8, generator=g, dtype=torch.float64), 4)
        for _ in range(2)
    ]
    rect = _svd_triplets(torch.randn(3, 6, 8, generator=g, dtype=torch.float64), 4)
    spectra = [square[0], rect, square[1]]
    grid = mt.coupling_grid(spectra)
    assert np.isnan(grid[0, 1]) and np.isnan(grid[1, 2]) and np.isnan(grid[2, 1])
    assert np.isfinite(grid[0, 2]) and np.isfinite(grid[1, 1])
    assert np.all(np.isnan(mt.alignment_grid(spectra)[1, 0]))
    assert np.isnan(mt.random_coupling_grid(spectra)[0, 1])
    assert np.isfinite(mt.summarize_coupling(grid))


def test_grids_match_pairwise_functions() -> None:
    g = _gen(12)
    jacs = [torch.randn(5, 9, 9, generator=g, dtype=torch.float64) for _ in range(3)]
    jacs[2] = jacs[0] + 0.1 * jacs[2]  # partly aligned with block 0
    spectra = [_svd_triplets(j, k) for j, k in zip(jacs, [6, 8, 7], strict=True)]
    grid = mt.coupling_grid(spectra, K=5)
    panels = mt.alignment_grid(spectra, K=5)
    for i, (ui, si, vi) in enumerate(spectra):
        for j, (uj, _, vj) in enumerate(spectra):
            pair = mt.coupling(ui, si, vi, uj, vj, K=5)
            assert grid[i, j] == pytest.approx(pair.mean(), abs=1e-12)
            mat = mt.alignment_matrix(ui, si, vi, uj, vj, K=5).mean(0).numpy()
            np.testing.assert_allclose(panels[i, j], mat, atol=1e-12)
    assert grid[0, 2] < 0.5 < grid[0, 1]
    with pytest.raises(ValueError):
        mt.coupling_grid(spectra, K=7)  # block 0 has only 6 values


def test_ra2_float32_numpy_inputs() -> None:
    spectra = _aligned_spectra(3)
    spectra32 = [tuple(t.numpy().astype(np.float32) for t in trip) for trip in spectra]
    np.testing.assert_allclose(mt.coupling_grid(spectra32), 0.0, atol=1e-5)


def test_ra2_bad_inputs() -> None:
    (ui, si, vi), (uj, _, vj) = _random_spectra(2)
    with pytest.raises(ValueError):
        mt.coupling(ui, si, vi, uj, vj, K=20)  # more than k
    with pytest.raises(ValueError):
        mt.coupling(ui, si[:, :3], vi, uj, vj)  # S does not match U
    with pytest.raises(ValueError):
        mt.coupling(ui, si, vi, uj[:, :5], vj)  # different Jacobian shape
    with pytest.raises(ValueError):
        mt.off_diagonal_ratio(torch.zeros(3, 4, 5))
    with pytest.raises(ValueError):
        mt.coupling_grid([])
    with pytest.raises(ValueError):
        mt.summarize_coupling(np.zeros((2, 3)))


def test_off_diagonal_ratio_known_value() -> None:
    m = torch.tensor([[2.0, -1.0], [1.0, 2.0]])
    np.testing.assert_allclose(mt.off_diagonal_ratio(m), 0.5)
    np.testing.assert_allclose(mt.off_diagonal_ratio(np.ones((3, 4, 4))), [3.0] * 3)


# ----------------------------------------------------------------------------
# RA3
# ----------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("rank", [1, 3, 5])
def test_known_rank(rank: int, dtype: torch.dtype) -> None:
    g = _gen(7)
    left = torch.randn(10, 16, rank, generator=g, dtype=torch.float64)
    right = torch.randn(10, rank, 16, generator=g, dtype=torch.float64)
    s = torch.linalg.svdvals((left @ right).to(dtype))[:, :12]
    np.testing.assert_array_equal(mt.numerical_rank(s), rank)
    assert np.all(mt.singular_gap(s, rank) < 1e-4)
    np.testing.assert_array_equal(mt.largest_gap_index(s), rank)
    assert mt.numerical_rank(s).dtype == np.int64
    assert mt.singular_gap(s, rank).shape == (10,)


def test_rank_helpers_on_numpy_and_flat_spectra() -> None:
    s = np.array([[4.0, 2.0, 1.0, 0.5], [1.0, 1.0, 0.001, 0.0005]])
    np.testing.assert_array_equal(mt.numerical_rank(s, rtol=0.2), [3, 2])
    np.testing.assert_allclose(mt.singular_gap(s, 2), [0.5, 0.001])
    np.testing.assert_array_equal(mt.largest_gap_index(s), [1, 2])
    # An exact zero after a genuine value is the largest drop.
    np.testing.assert_array_equal(mt.largest_gap_index([1.0, 0.5, 0.01, 0.0]), 3)
    # Round-off below float32 epsilon does not compete with the true drop.
    noisy32 = np.array([1.0, 0.8, 1e-3, 3e-8, 1e-9, 0.0], dtype=np.float32)
    np.testing.assert_array_equal(mt.largest_gap_index(noisy32), 3)
    assert mt.numerical_rank(np.array([3.0, 2.0, 1e-9])) == 2


def test_rank_bad_inputs() -> None:
    s = torch.ones(4, 5)
    with pytest.raises(ValueError):
        mt.singular_gap(s, 5)
    with pytest.raises(ValueError):
        mt.singular_gap(s, 0)
    with pytest.raises(ValueError):
        mt.largest_gap_index(torch.ones(4, 1))
    with pytest.raises(ValueError):
        mt.numerical_rank(s, rtol=0.0)


# ----------------------------------------------------------------------------
# RA4
# ----------------------------------------------------------------------------


def test_depth_scaling_exact_inverse_depth() -> None:
    a = torch.randn(12, 12, generator=_gen(8), dtype=torch.float64)
    depths = [4, 8, 16, 32, 64]
    sigma1 = [float(torch.linalg.svdvals(a / depth)[0]) for depth in depths]
    fit = mt.depth_scaling(depths, sigma1)
    assert fit["slope"] == pytest.approx(-1.0, abs=1e-12)
    assert fit["r2"] == pytest.approx(1.0, abs=1e-12)
    sigma_a = float(torch.linalg.svdvals(a)[0])
    assert fit["intercept"] == pytest.approx(math.log(sigma_a), abs=1e-12)


def test_inverse_sigma_fit() -> None:
    flat = mt.inverse_sigma_fit(torch.full((8,), 0.25))
    assert flat["slope"] == pytest.approx(0.0, abs=1e-12)
    assert flat["intercept"] == pytest.approx(4.0)
    assert flat["r2"] == 1.0
    blocks = np.arange(1, 7)
    line = mt.inverse_sigma_fit(1.0 / (2.0 + 0.5 * blocks))
    assert line["slope"] == pytest.approx(0.5)
    assert line["intercept"] == pytest.approx(2.0)
    assert line["r2"] == pytest.approx(1.0)
    assert all(isinstance(v, float) for v in line.values())


def test_fit_bad_inputs() -> None:
    with pytest.raises(ValueError):
        mt.inverse_sigma_fit([1.0])
    with pytest.raises(ValueError):
        mt.inverse_sigma_fit([1.0, 0.0, 2.0])
    with pytest.raises(ValueError):
        mt.depth_scaling([4, 8], [1.0, 2.0, 3.0])
    with pytest.raises(ValueError):
        mt.depth_scaling([8, 8], [1.0, 2.0])
    with pytest.raises(ValueError):
        mt.depth_scaling([4, 8], [[1.0, 2.0]])


# ----------------------------------------------------------------------------
# Neural Collapse
# ----------------------------------------------------------------------------


def _etf_setup(c: int = 5, d: int = 8, per_class: int = 6, noise: float = 0.0):
    """Class means forming a rotated, shifted simplex ETF; balanced samples."""
    g = _gen(9)
    simplex = math.sqrt(c / (c - 1)) * (torch.eye(c) - 1.0 / c).to(torch.float64)
    basis = torch.linalg.qr(torch.randn(d, c, generator=g, dtype=torch.float64)).Q
    centred = 3.0 * simplex @ basis.T  # (C, D), rows sum to zero
    shift = torch.randn(d, generator=g, dtype=torch.float64)
    labels = torch.arange(c).repeat_interleave(per_class)
    eps = noise * torch.randn(c * per_class, d, generator=g, dtype=torch.float64)
    eps = eps.reshape(c, per_class, d)
    eps = (eps - eps.mean(dim=1, keepdim=True)).reshape(-1, d)  # keep means exact
    features = centred[labels] + shift + eps
    return features, labels, centred


def test_simplex_etf_collapse() -> None:
    features, labels, centred = _etf_setup()
    nc = mt.neural_collapse(features, labels, centred)
    assert set(nc) == {"nc1", "nc2_equinorm", "nc2_equiangle", "nc3", "nc4"}
    assert all(isinstance(v, float) for v in nc.values())
    for key in ("nc1", "nc2_equinorm", "nc2_equiangle", "nc3", "nc4"):
        assert nc[key] == pytest.approx(0.0, abs=1e-10), key


def test_etf_with_noise() -> None:
    features, labels, centred = _etf_setup(noise=0.05)
    bias = torch.zeros(5)
    nc = mt.neural_collapse(features.numpy(), labels.numpy(), centred, bias)
    assert nc["nc2_equinorm"] < 1e-10 and nc["nc2_equiangle"] < 1e-10
    assert nc["nc3"] < 1e-10 and nc["nc4"] == 0.0
    assert 0.0 < nc["nc1"] < 1e-2


def test_nc1_matches_pseudo_inverse_formula() -> None:
    g = _gen(10)
    c, d = 4, 6
    labels = torch.tensor([0, 0, 0, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3, 3])
    feats = torch.randn(labels.numel(), d, generator=g, dtype=torch.float64)
    feats = feats + 2.0 * torch.randn(c, d, generator=g, dtype=torch.float64)[labels]
    weight = torch.randn(c, d, generator=g, dtype=torch.float64)
    means = torch.stack([feats[labels == k].mean(0) for k in range(c)])
    centred = means - feats.mean(0)
    resid = feats - means[labels]
    sigma_w = resid.T @ resid / labels.numel()
    sigma_b = centred.T @ centred / c
    expected = float(torch.trace(sigma_w @ torch.linalg.pinv(sigma_b)) / c)
    nc = mt.neural_collapse(feats, labels, weight)
    assert nc["nc1"] == pytest.approx(expected, rel=1e-8)
    norms = centred.norm(dim=1)
    assert nc["nc2_equinorm"] == pytest.approx(
        float(norms.std(correction=0) / norms.mean())
    )


def test_random_features_do_not_collapse() -> None:
    g = _gen(11)
    c, d, n = 4, 16, 80
    feats = torch.randn(n, d, generator=g)  # float32
    labels = torch.arange(n) % c
    weight = torch.randn(c, d, generator=g)
    bias = torch.randn(c, generator=g)
    nc = mt.neural_collapse(feats, labels, weight, bias, num_classes=c)
    assert nc["nc1"] > 1.0
    assert nc["nc2_equinorm"] > 0.01
    assert nc["nc2_equiangle"] > 0.05
    assert nc["nc3"] > 0.5
    assert nc["nc4"] > 0.2


@pytest.mark.parametrize("device", DEVICES)
def test_nc_dtypes_and_devices(device: str) -> None:
    features, labels, centred = _etf_setup(noise=0.05)
    ref = mt.neural_collapse(features, labels, centred)
    nc32 = mt.neural_collapse(
        features.float().to(device), labels.to(device), centred.float().to(device)
    )
    for key, value in ref.items():
        assert nc32[key] == pytest.approx(value, abs=1e-5), key


def test_nc_bad_inputs() -> None:
    features, labels, centred = _etf_setup()
    with pytest.raises(ValueError):  # label out of range
        mt.neural_collapse(features, torch.where(labels == 4, 5, labels), centred)
    with pytest.raises(ValueError):  # negative label
        mt.neural_collapse(features, labels - 1, centred)
    with pytest.raises(ValueError):  # a class with no sample
        mt.neural_collapse(features, torch.where(labels == 4, 3, labels), centred)
    with pytest.raises(ValueError):  # float labels
        mt.neural_collapse(features, labels.double(), centred)
    with pytest.raises(ValueError):  # label count
        mt.neural_collapse(features, labels[:-1], centred)
    with pytest.raises(ValueError):  # feature dimension
        mt.neural_collapse(features[:, :-1], labels, centred)
    with pytest.raises(ValueError):  # 1-D features
        mt.neural_collapse(features[:, 0], labels, centred)
    with pytest.raises(ValueError):  # bias shape
        mt.neural_collapse(features, labels, centred, torch.zeros(3))
    with pytest.raises(ValueError):  # num_classes disagrees with weight
        mt.neural_collapse(features, labels, centred, num_classes=6)


# ----------------------------------------------------------------------------
# Devices
# ----------------------------------------------------------------------------


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_ra_metrics_on_gpu() -> None:
    hs = _line_path(torch.arange(6, dtype=torch.float64)).cuda().float()
    np.testing.assert_allclose(mt.line_shape_score(hs), 1.0, atol=1e-5)
    np.testing.assert_allclose(mt.principal_share(hs), 1.0, atol=1e-5)
    spectra = [tuple(t.cuda() for t in trip) for trip in _aligned_spectra(3)]
    np.testing.assert_allclose(mt.coupling_grid(spectra), 0.0, atol=1e-10)
    assert mt.random_coupling_grid(spectra).shape == (3, 3)
    ui, si, vi = spectra[0]
    assert mt.alignment_matrix(ui, si, vi, ui, vi).device.type == "cuda"
    np.testing.assert_array_equal(
        mt.largest_gap_index(si), mt.largest_gap_index(si.cpu())
    )
