"""Top singular triplets: matrix-free Lanczos against dense SVD."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

from resalign.jacobians import residual_jacobians
from resalign.spectra import dense_svd, gram_svd, top_singular

from .conftest import conv_branch

K = 12


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Small LAPACK calls on shared CPUs run faster (and steadier) on one thread."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _inputs(shape: tuple[int, ...], seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=gen, dtype=torch.float64).relu()


def _sin_largest_angle(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Sine of the largest principal angle between column spans, per input."""
    cos = torch.linalg.svdvals(a.mT @ b)
    return (1 - cos.min(-1).values.clamp(max=1) ** 2).clamp_min(0).sqrt()


def _gapped_prefix(s: torch.Tensor, rel_gap: float = 0.02) -> int:
    """Largest j <= len(s) - 1 with a relative gap after s[j-1] in every input."""
    gaps = (s[:, :-1] - s[:, 1:]) / s[:, :-1]
    ok = (gaps > rel_gap).all(0).nonzero().flatten()
    return int(ok.max()) + 1 if len(ok) else 0


def _check_against_dense(jac: torch.Tensor, u, s, v, k: int) -> None:
    du, ds, dv = dense_svd(jac, k + 1)
    torch.testing.assert_close(s, ds[:, :k], rtol=1e-4, atol=0)
    # Pairing J v_i = s_i u_i holds exactly; J^T u_i = s_i v_i to the tolerance.
    torch.testing.assert_close(jac @ v, u * s[:, None, :], rtol=0, atol=1e-10)
    back = jac.mT @ u - v * s[:, None, :]
    assert float(back.norm(dim=1).max() / s.min()) < 1e-2
    eye = torch.eye(k, dtype=u.dtype)
    torch.testing.assert_close(u.mT @ u, eye.expand_as(u.mT @ u), atol=1e-10, rtol=0)
    torch.testing.assert_close(v.mT @ v, eye.expand_as(v.mT @ v), atol=1e-10, rtol=0)
    j = _gapped_prefix(ds)
    assert j >= 1, "test block has no spectral gap to compare subspaces"
    assert float(_sin_largest_angle(u[..., :j], du[..., :j]).max()) < 1e-2
    assert float(_sin_largest_angle(v[..., :j], dv[..., :j]).max()) < 1e-2


def test_square_conv_block_matches_dense_svd() -> None:
    branch = conv_branch(8, 8, 1, seed=0, mild=True)
    h = _inputs((2, 8, 8, 8), seed=1)  # d = 512
    u, s, v, info = top_singular(branch, h, K, return_info=True)
    assert info["steps"] > 0  # the Lanczos route, not the dense one
    assert u.shape == (2, 512, K) and s.shape == (2, K) and v.shape == (2, 512, K)
    assert torch.all(s[:, :-1] >= s[:, 1:])
    jac = residual_jacobians(branch, h)
    _check_against_dense(jac, u, s, v, K)


def test_downsampling_block_with_projection_skip() -> None:
    branch = conv_branch(8, 16, 2, seed=2, mild=True)
    torch.manual_seed(3)
    skip = nn.Sequential(nn.Conv2d(8, 16, 1, stride=2, bias=False), nn.BatchNorm2d(16))
    skip = skip.double().eval()
    h = _inputs((2, 8, 8, 8), seed=4)  # 512 -> 256
    jac = residual_jacobians(branch, h, "relu", skip)
    assert jac.shape == (2, 256, 512)
    lanczos = top_singular(branch, h, K, "relu", skip, iters=20, return_info=True)
    assert lanczos[3]["steps"] > 0
    _check_against_dense(jac, *lanczos[:3], K)
    dense = top_singular(branch, h, K, "relu", skip, return_info=True)
    assert dense[3]["steps"] == 0  # min(d) <= block * iters: exact route
    _check_against_dense(jac, *dense[:3], K)


def test_pre_activation_block_without_skip() -> None:
    branch = conv_branch(4, 4, 1, seed=5, mild=True)
    h = _inputs((1, 4, 8, 8), seed=6)  # d = 256
    u, s, v = top_singular(branch, h, 6, post=None, skip=None, iters=10)
    assert not (u.requires_grad or s.requires_grad or v.requires_grad)
    _check_against_dense(residual_jacobians(branch, h, None, None), u, s, v, 6)


def test_k_near_full_rank_takes_the_exact_route() -> None:
    branch = conv_branch(4, 4, 1, seed=16, mild=True)
    h = _inputs((1, 4, 8, 8), seed=17)  # d = 256
    u, s, v, info = top_singular(branch, h, 250, block=4, iters=10, return_info=True)
    assert info["steps"] == 0 and s.shape == (1, 250)
    exact = torch.linalg.svdvals(residual_jacobians(branch, h))
    torch.testing.assert_close(s, exact[:, :250])


def test_seed_makes_runs_reproducible_and_batches_independent() -> None:
    branch = conv_branch(4, 4, 1, seed=7, mild=True)
    h = _inputs((3, 4, 8, 8), seed=8)
    a = top_singular(branch, h, 5, iters=12, seed=3)
    b = top_singular(branch, h, 5, iters=12, seed=3)
    for x, y in zip(a, b, strict=True):
        assert torch.equal(x, y)
    split = top_singular(branch, h, 5, iters=12, seed=3, batch=2)
    torch.testing.assert_close(split[1], a[1], rtol=1e-5, atol=0)


def test_warns_when_iterations_run_out() -> None:
    branch = conv_branch(4, 4, 1, seed=9, mild=True)
    h = _inputs((1, 4, 8, 8), seed=10)
    with pytest.warns(RuntimeWarning, match="iters"):
        top_singular(branch, h, 4, block=4, iters=2)


def test_float32_inputs_keep_their_dtype() -> None:
    branch = conv_branch(4, 4, 1, seed=11, mild=True).float()
    h = _inputs((1, 4, 8, 8), seed=12).float()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        u, s, v = top_singular(branch, h, 4, iters=10)
    assert u.dtype == s.dtype == v.dtype == torch.float32
    exact = torch.linalg.svdvals(residual_jacobians(branch.double(), h.double()))
    torch.testing.assert_close(s.double(), exact[:, :4], rtol=1e-4, atol=0)


@pytest.mark.parametrize(
    ("dtype", "rtol"), [(torch.float64, 1e-8), (torch.float32, 1e-4)]
)
def test_residual_tolerance_bounds_the_returned_triplets(dtype, rtol) -> None:
    branch = conv_branch(8, 8, 1, seed=18, mild=True)
    h = _inputs((2, 8, 8, 8), seed=19)  # d = 512
    jac = residual_jacobians(branch, h).double()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        u, s, v, info = top_singular(
            branch.to(dtype), h.to(dtype), K, rtol=rtol, return_info=True
        )
    assert info["steps"] > 0
    u, s, v = u.double(), s.double(), v.double()
    scale = s[:, :1]
    # The stated guarantee: ||J^T u_i - s_i v_i|| <= rtol * s_1 for all i ...
    back = torch.linalg.vector_norm(jac.mT @ u - v * s[:, None, :], dim=1)
    assert float((back / scale).max()) <= rtol
    # ... measured and reported ...
    assert abs(info["residual"] - float((back / scale).max())) < 0.1 * rtol
    # ... with J v_i = s_i u_i to rounding and orthonormal vectors.
    eps = torch.finfo(dtype).eps
    fwd = torch.linalg.vector_norm(jac @ v - u * s[:, None, :], dim=1)
    assert float((fwd / scale).max()) < 100 * eps
    eye = torch.eye(K, dtype=torch.float64).expand(2, K, K)
    torch.testing.assert_close(u.mT @ u, eye, rtol=0, atol=100 * eps)
    torch.testing.assert_close(v.mT @ v, eye, rtol=0, atol=100 * eps)
    # Each s_i lies within r_i of a singular value (here: its own).
    exact = torch.linalg.svdvals(jac)[:, :K]
    assert bool(((s - exact).abs() <= back + 100 * eps * scale).all())
    # A tighter residual bound than the value test alone takes more steps.
    plain = top_singular(branch.to(dtype), h.to(dtype), K, return_info=True)[3]
    assert plain["residual"] > info["residual"]
    assert plain["dim"] <= info["dim"]


def test_default_stop_gives_values_to_tol_on_a_flat_spectrum() -> None:
    # 16 channels at 8x8 (d = 1,024) in float32 with k = 30, the size of the
    # benchmark's quick case (flat top spectrum), on the default settings.
    branch = conv_branch(16, 16, 1, seed=23, mild=True).float()
    h = _inputs((2, 16, 8, 8), seed=24).float()
    u, s, v, info = top_singular(branch, h, 30, return_info=True)
    assert info["steps"] > 0 and info["last_change"] <= 1e-4
    jac = residual_jacobians(branch.double(), h.double())
    exact = torch.linalg.svdvals(jac)[:, :30]
    torch.testing.assert_close(s.double(), exact, rtol=1e-4, atol=0)
    back = torch.linalg.vector_norm(
        jac.mT @ u.double() - v.double() * s[:, None], dim=1
    )
    assert abs(info["residual"] - float((back / s[:, :1]).max())) < 1e-5


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_krylov_dimension_beyond_the_rank(dtype) -> None:
    # Through one channel the 512-d block has rank at most 64, yet min(d) = 512
    # keeps the Lanczos route: the recurrence breaks down at dimension 64 and
    # must deflate (not normalise rounding noise into new basis vectors).
    torch.manual_seed(7)
    branch = nn.Sequential(nn.Conv2d(8, 1, 3, padding=1), nn.Conv2d(1, 8, 1))
    branch = branch.to(dtype).eval()
    h = _inputs((2, 8, 8, 8), seed=8).to(dtype)
    jac = residual_jacobians(branch, h, post=None)
    assert int(torch.linalg.matrix_rank(jac).max()) <= 64
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # it converges
        out = top_singular(branch, h, K, post=None, iters=20, return_info=True)
    u, s, v, info = out
    assert info["steps"] > 0 and info["dim"] > 64
    if dtype == torch.float64:
        _check_against_dense(jac, u, s, v, K)
    else:
        exact = torch.linalg.svdvals(jac.double())[:, :K].to(dtype)
        torch.testing.assert_close(s, exact, rtol=1e-4, atol=0)
        assert info["residual"] < 1e-2


def test_autodiff_route_matches_the_linear_pieces() -> None:
    # A plain function hides the layers: products go through jvp/vjp instead.
    branch = conv_branch(8, 8, 2, seed=25, mild=True)
    h = _inputs((3, 8, 10, 10), seed=26)
    skip = nn.Conv2d(8, 8, 1, stride=2).double()
    fast = top_singular(branch, h, K, skip=skip, return_info=True)
    slow = top_singular(lambda x: branch(x), h, K, skip=skip, return_info=True)
    assert fast[3]["products"] == slow[3]["products"]
    torch.testing.assert_close(fast[1], slow[1], rtol=1e-9, atol=0)
    jac = residual_jacobians(branch, h, skip=skip)
    _check_against_dense(jac, *slow[:3], K)


def test_dense_svd_matches_unchunked_svd() -> None:
    gen = torch.Generator().manual_seed(13)
    jac = torch.randn(7, 6, 9, generator=gen, dtype=torch.float64)
    u, s, v = dense_svd(jac, k=4, chunk=3)
    fu, fs, fvh = torch.linalg.svd(jac, full_matrices=False)
    assert u.shape == (7, 6, 4) and s.shape == (7, 4) and v.shape == (7, 9, 4)
    torch.testing.assert_close(s, fs[:, :4])
    signs = torch.sign((u * fu[..., :4]).sum(1, keepdim=True))
    torch.testing.assert_close(u * signs, fu[..., :4])
    torch.testing.assert_close(v * signs, fvh[:, :4].mT)
    torch.testing.assert_close(jac @ v, u * s[:, None])
    full = dense_svd(jac)
    assert full[1].shape == (7, 6)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"k": 600}, r"min\(d_out, d_in\)"),
        ({"k": 0}, r"\[1, 512\]"),
        ({"post": "gelu"}, "relu"),
        ({"skip": "proj"}, "identity"),
        ({"block": 0}, "block"),
        ({"tol": 0.0}, "tol"),
        ({"rtol": 1.5}, "rtol"),
    ],
)
def test_bad_arguments_raise(kwargs, match) -> None:
    branch = conv_branch(8, 8, 1, seed=14, mild=True)
    h = _inputs((1, 8, 8, 8), seed=15)
    args = {"k": 3} | kwargs
    with pytest.raises(ValueError, match=match):
        top_singular(branch, h, **args)


def test_dense_svd_bad_arguments() -> None:
    jac = torch.zeros(2, 3, 4)
    with pytest.raises(ValueError, match=r"\[1, 3\]"):
        dense_svd(jac, k=4)
    with pytest.raises(ValueError, match="shape"):
        dense_svd(jac[0])
    with pytest.raises(ValueError, match="chunk"):
        dense_svd(jac, chunk=0)


def _sin_per_vector(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Sine of the angle between columns ``a_i`` and ``b_i`` (unit), no sqrt floor."""
    proj = b * (a * b).sum(1, keepdim=True)
    return torch.linalg.vector_norm(a - proj, dim=1)


def _known_spectrum(
    n: int, d_out: int, d_in: int, values: torch.Tensor, seed: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Matrices ``Q_L diag(values) Q_R^T`` with random orthonormal factors."""
    gen = torch.Generator().manual_seed(seed)
    r = len(values)
    ql = torch.linalg.qr(torch.randn(n, d_out, r, generator=gen, dtype=torch.float64))
    qr = torch.linalg.qr(torch.randn(n, d_in, r, generator=gen, dtype=torch.float64))
    jac = ql.Q @ (values[:, None] * qr.Q.mT)
    return jac, ql.Q, qr.Q


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("shape", [(40, 40), (30, 50), (50, 30)])
def test_gram_svd_matches_linalg_svd_on_random_matrices(shape, dtype) -> None:
    gen = torch.Generator().manual_seed(20)
    jac = torch.randn(9, *shape, generator=gen, dtype=torch.float64)
    jac[:, 3] = 0  # a zero row (dropped before the Gram matrix)
    jac[:, :, 5] = 0  # and a zero column
    jac = jac.to(dtype)
    k = 8
    u, s, v = gram_svd(jac, k, chunk=4)
    fu, fs, fvh = torch.linalg.svd(jac.double(), full_matrices=False)
    assert u.shape == (9, shape[0], k) and v.shape == (9, shape[1], k)
    assert u.dtype == s.dtype == v.dtype == dtype
    tol = 1e-10 if dtype == torch.float64 else 1e-5
    torch.testing.assert_close(s.double(), fs[:, :k], rtol=tol, atol=0)
    torch.testing.assert_close(jac @ v, u * s[:, None], rtol=0, atol=tol * 10)
    back = jac.mT @ u - v * s[:, None]
    assert float(back.norm(dim=1).max() / s[:, 0].min()) < tol * 10
    eye = torch.eye(k, dtype=dtype).expand(9, k, k)
    torch.testing.assert_close(u.mT @ u, eye, rtol=0, atol=tol * 10)
    torch.testing.assert_close(v.mT @ v, eye, rtol=0, atol=tol * 10)
    # Vectors of values 2% (of s_1) away from their neighbours, per pair.
    gaps = (fs[:, :k] - fs[:, 1 : k + 1]) / fs[:, :1]
    apart = torch.minimum(gaps, torch.cat([gaps[:, :1].clamp(min=1), gaps[:, :-1]], 1))
    apart = apart > 0.02
    assert apart.sum() > 20
    sin_u = _sin_per_vector(u.double(), fu[..., :k])
    sin_v = _sin_per_vector(v.double(), fvh[:, :k].mT)
    assert float(torch.maximum(sin_u, sin_v)[apart].max()) < tol * 10


def test_gram_svd_recovers_known_low_rank_spectra() -> None:
    values = torch.tensor([5.0, 3.0, 2.0, 1.5, 1.0, 0.5], dtype=torch.float64)
    jac, ql, qr = _known_spectrum(6, 48, 32, values, seed=21)  # rank 6
    u, s, v = gram_svd(jac, 6)
    torch.testing.assert_close(s, values.expand(6, 6), rtol=1e-12, atol=0)
    cos_u = (u * ql).sum(1).abs()
    cos_v = (v * qr).sum(1).abs()
    assert float(1 - torch.minimum(cos_u, cos_v).min()) < 1e-12
    signs = torch.sign((u * ql).sum(1))
    torch.testing.assert_close(v * signs[:, None], qr, rtol=0, atol=1e-10)


def test_gram_svd_falls_back_beyond_the_numerical_rank() -> None:
    # k = 8 > rank 6: the zero singular values fail the check and the exact
    # route gives them (and orthonormal vectors for them).
    values = torch.tensor([4.0, 4.0, 2.0, 1.0, 1e-3, 1e-5], dtype=torch.float64)
    jac, _, _ = _known_spectrum(3, 30, 36, values, seed=22)
    jac = jac.float()
    u, s, v = gram_svd(jac, 8)
    exact = torch.linalg.svdvals(jac.double())[:, :8]
    torch.testing.assert_close(s.double(), exact, rtol=0, atol=1e-5)
    torch.testing.assert_close(
        s[:, :4].double(), values[:4].expand(3, 4), rtol=1e-6, atol=0
    )
    eye = torch.eye(8).expand(3, 8, 8)
    torch.testing.assert_close(u.mT @ u, eye, rtol=0, atol=1e-5)
    torch.testing.assert_close(v.mT @ v, eye, rtol=0, atol=1e-5)
    torch.testing.assert_close(jac @ v, u * s[:, None], rtol=0, atol=1e-5)


def test_gram_svd_zero_matrix_and_bad_arguments() -> None:
    # Zero matrices fail the check (s_1 = 0) and take the exact route.
    jac = torch.zeros(2, 12, 10)
    u, s, v = gram_svd(jac, 2)
    assert torch.equal(s, torch.zeros(2, 2))
    torch.testing.assert_close(v.mT @ v, torch.eye(2).expand(2, 2, 2))
    with pytest.raises(ValueError, match=r"\[1, 10\]"):
        gram_svd(jac, k=11)
    with pytest.raises(ValueError, match="shape"):
        gram_svd(jac[0])
    with pytest.raises(ValueError, match="chunk"):
        gram_svd(jac, chunk=0)
    with pytest.raises(ValueError, match="rtol"):
        gram_svd(jac, rtol=1.0)
