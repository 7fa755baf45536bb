"""Known-answer tests for resalign.ujm (our candidate Unconstrained Jacobians Model)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from resalign import metrics as mt
from resalign import ujm

DT = torch.float64


def _unit(v: torch.Tensor) -> torch.Tensor:
    return v / torch.linalg.vector_norm(v)


@pytest.fixture(scope="module")
def binary_fit() -> tuple[torch.Tensor, torch.Tensor, ujm.UJMResult]:
    x, y = ujm.make_features(2, 8, 20, noise=0.5, seed=3)
    return x, y, ujm.fit_ujm(x, y, depth=4, lam=0.04, weight_decay=0.01, seed=1)


# ----------------------------------------------------------------------------
# Features
# ----------------------------------------------------------------------------


def test_features_shapes_and_simplex_means() -> None:
    x, y = ujm.make_features(4, 10, 5, noise=0.0, seed=0)
    assert x.shape == (20, 10) and x.dtype == DT
    assert y.dtype == torch.int64
    assert torch.equal(y, torch.arange(4).repeat_interleave(5))
    means = x[::5]  # noiseless: every input is its class mean
    torch.testing.assert_close(means.sum(dim=0), torch.zeros(10, dtype=DT))
    torch.testing.assert_close(
        torch.linalg.vector_norm(means, dim=1), torch.ones(4, dtype=DT)
    )
    cos = means @ means.T
    off = cos[~torch.eye(4, dtype=torch.bool)]
    torch.testing.assert_close(off, torch.full_like(off, -1 / 3))


def test_features_seeded() -> None:
    a = ujm.make_features(3, 6, 4, noise=0.3, seed=7)
    b = ujm.make_features(3, 6, 4, noise=0.3, seed=7)
    c = ujm.make_features(3, 6, 4, noise=0.3, seed=8)
    assert torch.equal(a[0], b[0]) and not torch.equal(a[0], c[0])


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"num_classes": 1}, "num_classes must be an integer >= 2"),
        ({"dim": 2}, "dim must be an integer >= 3"),
        ({"per_class": 0}, "per_class must be an integer >= 1"),
        ({"noise": -0.1}, "noise must be a finite number >= 0"),
        ({"num_classes": 2.5}, "num_classes must be an integer"),
    ],
)
def test_features_bad_arguments(kwargs: dict, match: str) -> None:
    args = {"num_classes": 3, "dim": 6, "per_class": 2, "noise": 0.1} | kwargs
    with pytest.raises(ValueError, match=match):
        ujm.make_features(**args)


# ----------------------------------------------------------------------------
# The model in closed form
# ----------------------------------------------------------------------------


def test_nilpotent_rank_one_split_is_an_equispaced_line() -> None:
    # A = a u v^T with v orthogonal to u: J^2 = 0, so (I + A/L)^l = I + (l/L) A.
    g = torch.Generator().manual_seed(0)
    d, L, a = 6, 5, 2.0
    u = _unit(torch.randn(d, generator=g, dtype=DT))
    v = torch.randn(d, generator=g, dtype=DT)
    v = _unit(v - (v @ u) * u)
    js = (a / L * torch.outer(u, v)).expand(L, d, d)
    x = torch.randn(7, d, generator=g, dtype=DT)
    hs = ujm.representations(x, js)
    assert hs.shape == (L + 1, 7, d)
    for step in range(L + 1):
        expected = x + (step / L) * a * (x @ v)[:, None] * u
        torch.testing.assert_close(hs[step], expected, rtol=0, atol=1e-12)
    np.testing.assert_allclose(mt.line_shape_score(hs), 1.0, atol=1e-12)
    np.testing.assert_allclose(mt.step_cv(hs), 0.0, atol=1e-12)


def test_tilted_rank_one_split_stays_on_a_line_with_geometric_steps() -> None:
    # v^T u = cos(theta) != 0: J^2 = tau J, steps grow by 1 + tau per block.
    g = torch.Generator().manual_seed(1)
    d, L, a = 6, 8, 3.0
    u = _unit(torch.randn(d, generator=g, dtype=DT))
    w = torch.randn(d, generator=g, dtype=DT)
    w = _unit(w - (w @ u) * u)
    v = 0.6 * u + 0.8 * w
    tau = a / L * 0.6
    js = (a / L * torch.outer(u, v)).expand(L, d, d)
    x = torch.randn(5, d, generator=g, dtype=DT)
    hs = ujm.representations(x, js)
    coef = ((1 + tau) ** torch.arange(L + 1, dtype=DT) - 1) / tau  # (L+1,)
    expected = x + coef[:, None, None] * (a / L) * (x @ v)[None, :, None] * u
    torch.testing.assert_close(hs, expected, rtol=0, atol=1e-12)
    np.testing.assert_allclose(mt.line_shape_score(hs), 1.0, atol=1e-12)
    np.testing.assert_allclose(
        mt.step_cv(hs), ujm.geometric_step_cv(1 + tau, L), rtol=1e-10
    )


def test_geometric_step_cv_known_values() -> None:
    assert ujm.geometric_step_cv(1.0, 9) == 0.0
    assert ujm.geometric_step_cv(3.0, 1) == 0.0
    # two steps 1 and r: std (r-1)/2, mean (r+1)/2
    assert ujm.geometric_step_cv(3.0, 2) == pytest.approx(0.5)
    with pytest.raises(ValueError, match="ratio must be a finite number > 0"):
        ujm.geometric_step_cv(0.0, 3)


def test_spectra_layout_and_aligned_coupling() -> None:
    g = torch.Generator().manual_seed(2)
    base = torch.randn(5, 5, generator=g, dtype=DT)
    js = torch.stack([base, 0.5 * base, 0.25 * base])  # same singular vectors
    spectra = ujm.spectra_of(js, k=3)
    assert len(spectra) == 3
    for j, (u, s, v) in zip(js, spectra, strict=True):
        assert u.shape == (1, 5, 3) and s.shape == (1, 3) and v.shape == (1, 5, 3)
        torch.testing.assert_close(j @ v[0], u[0] * s[0])
        assert bool((s[0, :-1] >= s[0, 1:]).all())
    grid = mt.coupling_grid(spectra)
    np.testing.assert_allclose(grid, 0.0, atol=1e-10)
    with pytest.raises(ValueError, match=r"k must be an integer in \[1, 5\]"):
        ujm.spectra_of(js, k=6)
    with pytest.raises(ValueError, match="Js must have shape"):
        ujm.spectra_of(base)


def test_representations_shape_errors() -> None:
    with pytest.raises(ValueError, match="Js act on dimension 5, but X has d = 4"):
        ujm.representations(torch.zeros(3, 4), torch.zeros(2, 5, 5))
    with pytest.raises(ValueError, match=r"Js must have shape \(L, d, d\)"):
        ujm.representations(torch.zeros(3, 4), torch.zeros(4, 4))


def test_orthogonal_readout() -> None:
    x, y = ujm.make_features(3, 8, 6, noise=0.2, seed=0)
    w = ujm.orthogonal_readout(x, y, scale=2.0)
    assert w.shape == (3, 8)
    means = torch.stack([x[y == c].mean(dim=0) for c in range(3)])
    torch.testing.assert_close(w @ means.T, torch.zeros(3, 3, dtype=DT))
    torch.testing.assert_close(
        torch.linalg.vector_norm(w, dim=1), torch.full((3,), 2.0, dtype=DT)
    )
    with pytest.raises(ValueError, match="need d >= 2C = 6"):
        ujm.orthogonal_readout(x[:, :5], y)


# ----------------------------------------------------------------------------
# Fitting
# ----------------------------------------------------------------------------


def test_binary_fit_is_an_even_symmetric_rank_one_split(binary_fit) -> None:
    x, y, res = binary_fit
    assert res.grad_norm < 1e-6 and res.accuracy == 1.0
    js = res.Js
    assert js.shape == (4, 8, 8) and res.W.shape == (2, 8)
    mean = js.mean(dim=0)
    spread = torch.linalg.matrix_norm(js - mean) / torch.linalg.matrix_norm(mean)
    assert float(spread.max()) < 1e-5  # the same map in every block
    s = torch.linalg.svdvals(js)
    assert float((s[:, 1] / s[:, 0]).max()) < 1e-6  # rank C - 1 = 1
    trace = torch.einsum("lii->l", js)
    torch.testing.assert_close(trace, s[:, 0], rtol=1e-6, atol=0)  # u = v
    spectra = ujm.spectra_of(js, k=4)
    assert mt.summarize_coupling(mt.coupling_grid(spectra)) < 1e-5
    hs = ujm.representations(x, js)
    np.testing.assert_allclose(mt.line_shape_score(hs), 1.0, atol=1e-9)
    sigma = float(s[:, 0].mean())
    np.testing.assert_allclose(
        mt.step_cv(hs), ujm.geometric_step_cv(1 + sigma, 4), atol=1e-6
    )


def test_fit_rank_at_most_c_minus_one() -> None:
    x, y = ujm.make_features(3, 8, 10, noise=0.5, seed=0)
    res = ujm.fit_ujm(x, y, depth=3, lam=0.03, weight_decay=0.01, seed=0)
    assert res.grad_norm < 1e-6
    s = torch.linalg.svdvals(res.Js)
    assert float((s[:, 2] / s[:, 0]).max()) < 1e-6
    assert float((s[:, 1] / s[:, 0]).min()) > 0.1
    report = ujm.measure_ujm(x, y, res, k=6)
    assert report.ra3["rank"].max() == 2
    assert report.ra2["coupling"] < 1e-4 < 0.5 < report.ra2["coupling_random"]
    assert len(report.hs) == 4 and report.hs[0].shape == (30, 8)
    with pytest.raises(ValueError, match="k=3 must exceed"):
        ujm.measure_ujm(x, y, res, k=3)


def test_fit_seeded_and_frozen_readout() -> None:
    x, y = ujm.make_features(2, 6, 8, noise=0.5, seed=0)
    a = ujm.fit_ujm(x, y, depth=2, lam=0.02, steps=30, seed=5)
    b = ujm.fit_ujm(x, y, depth=2, lam=0.02, steps=30, seed=5)
    c = ujm.fit_ujm(x, y, depth=2, lam=0.02, steps=30, seed=6)
    assert torch.equal(a.Js, b.Js) and torch.equal(a.W, b.W)
    assert not torch.equal(a.Js, c.Js)
    w = ujm.orthogonal_readout(x, y)
    frozen = ujm.fit_ujm(x, y, depth=2, lam=0.02, steps=30, readout=w)
    assert torch.equal(frozen.W, w) and not frozen.learned_readout
    assert frozen.weight_decay == 0.0


def test_gradient_descent_decreases_the_objective() -> None:
    x, y = ujm.make_features(2, 6, 8, noise=0.5, seed=0)
    res = ujm.fit_ujm(x, y, depth=3, lam=0.03, steps=200, method="gd", lr=0.5)
    assert res.method == "gd" and len(res.history) == 201
    assert np.all(np.diff(res.history) <= 1e-12)
    assert res.objective < 0.8 * res.history[0]


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"method": "adam"}, "unknown method 'adam'; valid: lbfgs, gd"),
        ({"depth": 0}, "depth must be an integer >= 1"),
        ({"lam": -1.0}, "lam must be a finite number >= 0"),
        ({"lr": 0.0}, "lr must be a finite number > 0"),
        ({"steps": 0}, "steps must be an integer >= 1"),
        ({"weight_decay": -1.0}, "weight_decay must be a finite number >= 0"),
        ({"y": torch.zeros(3, dtype=torch.int64)}, r"y must have shape \(16,\)"),
        ({"y": torch.zeros(16)}, "integer labels"),
        ({"readout": torch.zeros(2, 5)}, r"readout must have shape \(C >= 2, 6\)"),
        (
            {"readout": torch.zeros(2, 6), "weight_decay": 0.1},
            "weight_decay applies to a learned W",
        ),
        (
            {"y": torch.arange(16) % 3, "readout": torch.zeros(2, 6)},
            r"y must lie in \[0, 2\)",
        ),
    ],
)
def test_fit_bad_arguments(kwargs: dict, match: str) -> None:
    x, y = ujm.make_features(2, 6, 8, noise=0.5, seed=0)
    args = {"X": x, "y": y, "depth": 2, "lam": 0.01} | kwargs
    with pytest.raises(ValueError, match=match):
        ujm.fit_ujm(**args)
