"""Linear pieces of a branch: the same products as autodiff, without it."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from resalign.jacobians import quiet_forward_ad
from resalign.linearised import linearise
from resalign.models import fold_batchnorm

from .conftest import conv_branch, randomise_bn

COPIES = 3


def _autodiff(branch, h: torch.Tensor, v: torch.Tensor, u: torch.Tensor):
    """``dF/dh v`` and ``dF/dh^T u`` by torch.func, vector-major like Linearised."""
    n = h.shape[0]
    tangents = v.reshape(COPIES, n, *v.shape[1:])
    with quiet_forward_ad():
        push = torch.func.vmap(lambda t: torch.func.jvp(branch, (h,), (t,))[1])
        fwd = push(tangents)
    _, pull = torch.func.vjp(branch, h)
    back = torch.func.vmap(pull)(u.reshape(COPIES, n, *u.shape[1:]))[0]
    return fwd.reshape(COPIES * n, *fwd.shape[2:]), back.reshape(v.shape)


def _check(branch, h: torch.Tensor) -> None:
    gen = torch.Generator().manual_seed(1)
    lin = linearise(branch, h)
    assert lin is not None
    out_shape = tuple(branch(h).shape[1:])
    assert lin.in_shape == tuple(h.shape[1:]) and lin.out_shape == out_shape
    v = torch.randn(COPIES * len(h), *h.shape[1:], generator=gen, dtype=h.dtype)
    u = torch.randn(COPIES * len(h), *out_shape, generator=gen, dtype=h.dtype)
    fwd, back = _autodiff(branch, h, v, u)
    torch.testing.assert_close(lin.jvp(v), fwd, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(lin.vjp(u), back, rtol=1e-10, atol=1e-12)
    # the two are adjoint: <J v, u> = <v, J^T u> for every vector
    left = (lin.jvp(v) * u).flatten(1).sum(1)
    right = (v * lin.vjp(u)).flatten(1).sum(1)
    torch.testing.assert_close(left, right, rtol=1e-10, atol=1e-10)


def _inputs(*shape: int, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=gen, dtype=torch.float64)


@pytest.mark.parametrize(("c_in", "c_out", "stride"), [(4, 4, 1), (3, 5, 2)])
@pytest.mark.parametrize("side", [8, 7])  # odd sizes need output padding
def test_basic_block_matches_autodiff(c_in, c_out, stride, side) -> None:
    _check(conv_branch(c_in, c_out, stride, seed=2), _inputs(2, c_in, side, side))


def test_other_conv_settings_match_autodiff() -> None:
    torch.manual_seed(3)
    branch = nn.Sequential(
        nn.Conv2d(4, 6, (3, 5), stride=(2, 1), padding=(2, 1), dilation=2, groups=2),
        nn.ReLU(),
        nn.Conv2d(6, 4, 1, bias=True),
        nn.ReLU(),
        nn.Conv2d(4, 4, 3, padding=1),
    ).double()
    _check(branch, _inputs(2, 4, 9, 11))


@pytest.mark.parametrize("bn", [True, False])
def test_fc_branch_matches_autodiff(bn) -> None:
    torch.manual_seed(4)
    layers = [nn.Linear(6, 9, bias=False), nn.ReLU(), nn.Linear(9, 5)]
    if bn:
        layers.insert(1, nn.BatchNorm1d(9))
        layers.append(nn.BatchNorm1d(5))
    branch = nn.Sequential(*layers).double()
    randomise_bn(branch, torch.Generator().manual_seed(5))
    _check(branch.eval(), _inputs(4, 6))


def test_folded_branch_gives_the_same_products() -> None:
    branch = conv_branch(3, 3, 1, seed=6)
    folded = fold_batchnorm(branch)
    h = _inputs(2, 3, 6, 6)
    v = _inputs(2 * 2, 3, 6, 6, seed=7)
    a, b = linearise(branch, h), linearise(folded, h)
    torch.testing.assert_close(a.jvp(v), b.jvp(v), rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(a.vjp(v), b.vjp(v), rtol=1e-10, atol=1e-12)


def test_channels_last_inputs_give_the_same_products() -> None:
    branch = conv_branch(4, 4, 1, seed=8)
    h = _inputs(2, 4, 8, 8)
    lin = linearise(branch, h)
    v = _inputs(2 * 2, 4, 8, 8, seed=9)
    fast = v.contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(lin.jvp(fast), lin.jvp(v), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(lin.vjp(fast), lin.vjp(v), rtol=1e-12, atol=1e-12)


class _Sub(nn.Conv2d):
    """A subclass may change forward(): not recognised."""


@pytest.mark.parametrize(
    "layers",
    [
        [nn.Conv2d(2, 2, 3, padding=1), nn.BatchNorm2d(2).train(), nn.ReLU()],
        [nn.BatchNorm2d(2).eval(), nn.Conv2d(2, 2, 3, padding=1)],
        [nn.Conv2d(2, 2, 3, padding=1), nn.Tanh(), nn.Conv2d(2, 2, 1)],
        [nn.Conv2d(2, 2, 3, padding="same")],
        [nn.Conv2d(2, 2, 3, padding=1, padding_mode="circular")],
        [nn.Conv2d(2, 2, 3, padding=1), nn.MaxPool2d(2)],
        [_Sub(2, 2, 3, padding=1)],
        [nn.Linear(4, 4), nn.BatchNorm2d(4).eval()],
        [nn.ReLU()],
    ],
)
def test_other_branches_are_left_to_autodiff(layers) -> None:
    assert linearise(nn.Sequential(*layers), torch.rand(1, 2, 4, 4)) is None


def test_a_plain_function_is_left_to_autodiff() -> None:
    branch = conv_branch(2, 2, 1, seed=10)
    assert linearise(lambda x: branch(x), torch.rand(1, 2, 4, 4)) is None
    assert linearise(nn.Sequential(), torch.rand(1, 2, 4, 4)) is None
