"""Residual Jacobians: closed form, autodiff and finite differences agree."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from resalign.jacobians import fc_weights, output_mask, residual_jacobians

from .conftest import conv_branch, randomise_bn

D = 7
N = 5


def _fc_branch(seed: int, bn: bool = True, d_out: int = D) -> nn.Sequential:
    torch.manual_seed(seed)
    if bn:
        layers = [
            nn.Linear(D, D, bias=False),
            nn.BatchNorm1d(D),
            nn.ReLU(),
            nn.Linear(D, d_out, bias=True),
            nn.BatchNorm1d(d_out),
        ]
    else:
        layers = [nn.Linear(D, D), nn.ReLU(), nn.Linear(D, d_out)]
    branch = nn.Sequential(*layers).double()
    with torch.no_grad():
        randomise_bn(branch, torch.Generator().manual_seed(seed + 100))
    return branch.eval()


def _block(branch, post, skip):
    """The whole block ``h -> post(skip(h) + F(h))``."""

    def forward(h: torch.Tensor) -> torch.Tensor:
        out = branch(h)
        if skip == "identity":
            out = out + h
        elif skip is not None:
            out = out + skip(h)
        return torch.relu(out) if post == "relu" else out

    return forward


@torch.no_grad()
def _finite_difference(fn, h: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Central differences of ``fn`` per input, ``(N, d_out, d_in)``."""
    n, d_in = h.shape[0], h[0].numel()
    steps = eps * torch.eye(d_in, dtype=h.dtype).reshape(d_in, *h.shape[1:])
    plus = (h[:, None] + steps).reshape(n * d_in, *h.shape[1:])
    minus = (h[:, None] - steps).reshape(n * d_in, *h.shape[1:])
    diff = (fn(plus) - fn(minus)).reshape(n, d_in, -1) / (2 * eps)
    return diff.transpose(1, 2)


def _skip_jacobian(skip, h: torch.Tensor, d_out: int) -> torch.Tensor:
    """Jacobian of the skip connection per input, ``(N, d_out, d_in)``."""
    n, d_in = h.shape[0], h[0].numel()
    if skip is None:
        return torch.zeros(n, d_out, d_in, dtype=h.dtype)
    if skip == "identity":
        return torch.eye(d_in, dtype=h.dtype).expand(n, d_in, d_in)
    return _finite_difference(skip, h)


def _reference(branch, h, post, skip) -> torch.Tensor:
    """``dG/dh - diag(post') dskip/dh`` with G the whole block, by differences."""
    full = _finite_difference(_block(branch, post, skip), h)
    mask = output_mask(branch, h, post, skip)
    return full - mask[:, :, None] * _skip_jacobian(skip, h, full.shape[1])


def _projection(d_out: int) -> nn.Linear:
    torch.manual_seed(3)
    return nn.Linear(D, d_out).double()


SKIPS = ["identity", None, "projection"]


def _resolve(skip, d_out: int = D):
    return _projection(d_out) if skip == "projection" else skip


@pytest.mark.parametrize("post", ["relu", None])
@pytest.mark.parametrize("skip", SKIPS)
@pytest.mark.parametrize("bn", [True, False])
def test_fc_closed_form_matches_autodiff_and_differences(post, skip, bn) -> None:
    branch = _fc_branch(seed=1, bn=bn)
    skip = _resolve(skip)
    h = torch.randn(
        N, D, generator=torch.Generator().manual_seed(2), dtype=torch.float64
    )
    closed = residual_jacobians(branch, h, post, skip, method="closed")
    auto = residual_jacobians(branch, h, post, skip, method="autodiff")
    assert closed.shape == (N, D, D)
    torch.testing.assert_close(closed, auto, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(
        closed, _reference(branch, h, post, skip), atol=1e-7, rtol=0
    )


def test_fc_rectangular_projection_block() -> None:
    branch = _fc_branch(seed=4, d_out=D + 3)
    skip = _projection(D + 3)
    h = torch.randn(N, D, dtype=torch.float64)
    closed = residual_jacobians(branch, h, "relu", skip)
    assert closed.shape == (N, D + 3, D)
    torch.testing.assert_close(
        closed, residual_jacobians(branch, h, "relu", skip, method="autodiff")
    )
    torch.testing.assert_close(
        closed, _reference(branch, h, "relu", skip), atol=1e-7, rtol=0
    )


def test_relu_mask_zeroes_rows_of_inactive_outputs() -> None:
    branch = _fc_branch(seed=5)
    with torch.no_grad():
        branch[4].bias.sub_(1.0)  # push some sums below zero
    h = torch.randn(N, D, dtype=torch.float64)
    jac = residual_jacobians(branch, h)
    total = branch(h) + h
    inactive = total <= 0
    assert inactive.any() and (~inactive).any()
    assert torch.all(jac[inactive] == 0)
    assert torch.all(jac[~inactive].abs().sum(-1) > 0)
    torch.testing.assert_close(output_mask(branch, h), (~inactive).double())
    no_post = residual_jacobians(branch, h, post=None)
    assert torch.all(no_post[inactive].abs().sum(-1) > 0)


def test_auto_uses_closed_form_only_when_it_applies() -> None:
    assert fc_weights(_fc_branch(seed=6)) is not None
    assert fc_weights(_fc_branch(seed=6, bn=False)) is not None
    assert fc_weights(_fc_branch(seed=6).train()) is None
    assert (
        fc_weights(nn.Sequential(nn.Linear(D, D), nn.Tanh(), nn.Linear(D, D))) is None
    )
    assert fc_weights(conv_branch(2, 2, 1, seed=0)) is None
    with pytest.raises(ValueError, match="autodiff"):
        residual_jacobians(
            conv_branch(2, 2, 1, 0), torch.rand(1, 2, 4, 4), method="closed"
        )


@pytest.mark.parametrize("post", ["relu", None])
def test_conv_block_autodiff_matches_differences(post) -> None:
    branch = conv_branch(4, 4, 1, seed=7)
    h = torch.rand(3, 4, 6, 6, generator=torch.Generator().manual_seed(8)).double()
    jac = residual_jacobians(branch, h, post)
    assert jac.shape == (3, 144, 144)
    torch.testing.assert_close(
        jac, _reference(branch, h, post, "identity"), atol=1e-7, rtol=0
    )
    chunked = residual_jacobians(branch, h, post, chunk_size=50)
    torch.testing.assert_close(chunked, jac, rtol=1e-12, atol=1e-14)


def test_downsampling_and_widening_conv_blocks() -> None:
    gen = torch.Generator().manual_seed(9)
    branch = conv_branch(2, 4, 2, seed=10)
    torch.manual_seed(11)
    skip = nn.Sequential(nn.Conv2d(2, 4, 1, stride=2, bias=False), nn.BatchNorm2d(4))
    skip = skip.double().eval()
    h = torch.rand(2, 2, 6, 6, generator=gen).double()
    jac = residual_jacobians(branch, h, "relu", skip)  # 72 -> 36: reverse mode
    assert jac.shape == (2, 36, 72)
    torch.testing.assert_close(
        jac, _reference(branch, h, "relu", skip), atol=1e-7, rtol=0
    )
    wide = conv_branch(2, 6, 1, seed=12)  # d_out > d_in: forward-mode columns
    h = torch.rand(2, 2, 3, 3, generator=gen).double()
    jac = residual_jacobians(wide, h, "relu", None)
    assert jac.shape == (2, 54, 18)
    torch.testing.assert_close(
        jac, _reference(wide, h, "relu", None), atol=1e-7, rtol=0
    )


def test_result_is_detached_from_parameters() -> None:
    branch = _fc_branch(seed=13)
    h = torch.randn(2, D, dtype=torch.float64)
    for method in ("closed", "autodiff"):
        assert not residual_jacobians(branch, h, method=method).requires_grad


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"post": "tanh"}, "relu"),
        ({"skip": "projection"}, "identity"),
        ({"method": "exact"}, "autodiff"),
    ],
)
def test_bad_arguments_name_valid_values(kwargs, match) -> None:
    branch = _fc_branch(seed=14)
    with pytest.raises(ValueError, match=match):
        residual_jacobians(branch, torch.randn(2, D, dtype=torch.float64), **kwargs)


def test_chunk_size_must_be_positive() -> None:
    branch = conv_branch(2, 2, 1, seed=16)
    with pytest.raises(ValueError, match="chunk_size"):
        residual_jacobians(branch, torch.rand(1, 2, 3, 3).double(), chunk_size=0)


def test_identity_skip_needs_matching_shapes() -> None:
    branch = _fc_branch(seed=15, d_out=D + 1)
    with pytest.raises(ValueError, match="identity"):
        residual_jacobians(branch, torch.randn(2, D, dtype=torch.float64))
