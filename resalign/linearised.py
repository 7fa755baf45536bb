"""Jacobian products of piecewise-linear branches, without autodiff.

Most residual branches (resalign's FC and conv blocks, torchvision's
``BasicBlock``) are chains of affine layers (``Linear``, ``Conv2d``, each
with the eval-mode BatchNorm after it folded in) and ReLUs. At fixed inputs
``h`` such a branch's Jacobian is the product of the layers' bias-free linear
maps and the 0/1 masks of its ReLUs:

``dF/dh (h) v = A_k D_{k-1} ... D_1 A_1 v``,

and its transpose runs the same chain backwards with transposed maps (a
transposed convolution for ``Conv2d``). :func:`linearise` recognises such a
branch and records the masks once; :class:`Linearised` then applies ``dF/dh``
and ``dF/dh^T`` to many vectors per input at the cost of the convolutions (or
matrix products) alone. Forward-mode autodiff (``torch.func.jvp``) costs
about twice that on a 64-channel conv block, because it also carries the
nonlinear layers' primal values; :mod:`resalign.spectra` uses this module
where it applies and autodiff elsewhere.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .jacobians import Branch, fold_bn

__all__ = ["Linearised", "linearise"]


@dataclass(frozen=True)
class _Affine:
    """One affine layer ``x -> A x + b`` (BatchNorm folded in)."""

    weight: torch.Tensor
    bias: torch.Tensor
    conv: tuple[tuple[int, int], tuple[int, int], tuple[int, int], int] | None
    # (stride, padding, dilation, groups) of a Conv2d; None for a Linear

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """The affine map itself (used once, to find the ReLU masks)."""
        if self.conv is None:
            return F.linear(x, self.weight, self.bias)
        stride, padding, dilation, groups = self.conv
        return F.conv2d(x, self.weight, self.bias, stride, padding, dilation, groups)

    def linear(self, x: torch.Tensor) -> torch.Tensor:
        """``A x`` (no bias)."""
        if self.conv is None:
            return x @ self.weight.T
        stride, padding, dilation, groups = self.conv
        return F.conv2d(x, self.weight, None, stride, padding, dilation, groups)

    def transpose(self, y: torch.Tensor, in_shape: tuple[int, ...]) -> torch.Tensor:
        """``A^T y``, shaped ``(M, *in_shape)``."""
        if self.conv is None:
            return y @ self.weight
        stride, padding, dilation, groups = self.conv
        size = self.weight.shape[2:]
        extra = tuple(
            in_shape[2 + i]
            - ((y.shape[2 + i] - 1) * stride[i] - 2 * padding[i])
            - dilation[i] * (size[i] - 1)
            - 1
            for i in range(2)
        )
        return F.conv_transpose2d(
            y, self.weight, None, stride, padding, extra, groups, dilation
        )


def _pair(value: int | tuple[int, ...]) -> tuple[int, int] | None:
    if isinstance(value, int):
        return (value, value)
    if isinstance(value, tuple) and len(value) == 2:
        return value
    return None  # "same"/"valid" strings and other forms are left to autodiff


def _as_affine(module: nn.Module) -> _Affine | None:
    """The affine layer of a ``Linear`` or zero-padded ``Conv2d``, else None."""
    if type(module) is nn.Linear:
        weight = module.weight.detach()
        bias = module.bias
        return _Affine(
            weight,
            weight.new_zeros(weight.shape[0]) if bias is None else bias.detach(),
            None,
        )
    if type(module) is nn.Conv2d and module.padding_mode == "zeros":
        padding = _pair(module.padding)
        if padding is None:
            return None
        weight = module.weight.detach()
        bias = module.bias
        conv = (_pair(module.stride), padding, _pair(module.dilation), module.groups)
        return _Affine(
            weight,
            weight.new_zeros(weight.shape[0]) if bias is None else bias.detach(),
            conv,
        )
    return None


def _fold(layer: _Affine, bn: nn.Module) -> _Affine | None:
    """``layer`` followed by eval-mode BatchNorm ``bn``, as one affine layer."""
    kind = nn.BatchNorm1d if layer.conv is None else nn.BatchNorm2d
    if not (
        type(bn) is kind
        and not bn.training
        and bn.running_mean is not None
        and bn.running_var is not None
    ):
        return None
    return _Affine(*fold_bn(layer.weight, layer.bias, bn), layer.conv)


def _pieces(branch: Branch) -> list[_Affine | None] | None:
    """Affine layers (``None`` marks a ReLU) of a recognised branch, else None."""
    if not isinstance(branch, nn.Sequential) or len(branch) == 0:
        return None
    pieces: list[_Affine | None] = []
    for module in branch:
        if type(module) is nn.ReLU:
            pieces.append(None)
            continue
        if type(module) in (nn.BatchNorm1d, nn.BatchNorm2d):
            if not pieces or pieces[-1] is None:
                return None  # a BatchNorm that follows no affine layer
            folded = _fold(pieces[-1], module)
            if folded is None:
                return None
            pieces[-1] = folded
            continue
        layer = _as_affine(module)
        if layer is None:
            return None
        pieces.append(layer)
    return pieces if any(p is not None for p in pieces) else None


class Linearised:
    """``dF/dh`` of a piecewise-linear branch at fixed inputs, and its transpose.

    Build it with :func:`linearise`. Products take ``copies`` stacked batches
    of vectors, vector-major: row ``j * N + n`` of the argument is a vector for
    input ``n``. Images may be given in any memory layout; channels-last is the
    fastest for CPU convolutions.
    """

    def __init__(self, pieces: list[_Affine | None], h: torch.Tensor) -> None:
        self._pieces = [
            None if p is None else _Affine(p.weight.to(h), p.bias.to(h), p.conv)
            for p in pieces
        ]
        self.n = h.shape[0]
        self._masks: list[torch.Tensor | None] = []
        self._shapes: list[tuple[int, ...]] = []  # input shape of each piece
        x = h
        with torch.no_grad():
            for piece in self._pieces:
                self._shapes.append(tuple(x.shape))
                if piece is None:
                    mask = (x > 0).to(h.dtype)
                    self._masks.append(mask)
                    x = x * mask
                else:
                    self._masks.append(None)
                    x = piece(x)
        self.in_shape = tuple(h.shape[1:])
        self.out_shape = tuple(x.shape[1:])
        self._tiled: dict[tuple[int, int], torch.Tensor] = {}

    def _mask(self, i: int, copies: int, like: torch.Tensor) -> torch.Tensor:
        """Mask of piece ``i`` repeated ``copies`` times, in the layout of ``like``."""
        key = (i, copies)
        if key not in self._tiled:
            mask = self._masks[i]
            mask = mask.repeat(copies, *[1] * (mask.dim() - 1))
            if like.dim() == 4:
                mask = mask.contiguous(memory_format=torch.channels_last)
            self._tiled[key] = mask
        return self._tiled[key]

    def jvp(self, v: torch.Tensor) -> torch.Tensor:
        """``dF/dh v`` for ``v`` of shape ``(copies * N, *in_shape)``."""
        copies = v.shape[0] // self.n
        for i, piece in enumerate(self._pieces):
            v = v * self._mask(i, copies, v) if piece is None else piece.linear(v)
        return v

    def vjp(self, u: torch.Tensor) -> torch.Tensor:
        """``dF/dh^T u`` for ``u`` of shape ``(copies * N, *out_shape)``."""
        copies = u.shape[0] // self.n
        for i in reversed(range(len(self._pieces))):
            piece = self._pieces[i]
            if piece is None:
                u = u * self._mask(i, copies, u)
            else:
                shape = (u.shape[0], *self._shapes[i][1:])
                u = piece.transpose(u, shape)
        return u


def linearise(branch: Branch, h: torch.Tensor) -> Linearised | None:
    """``dF/dh`` of ``branch`` at ``h`` as a :class:`Linearised`, if recognised.

    Parameters
    ----------
    branch : callable
        A residual branch. Recognised: an ``nn.Sequential`` of ``nn.Linear``,
        ``nn.Conv2d`` (zero padding given as numbers), ``nn.ReLU`` and
        eval-mode ``nn.BatchNorm1d``/``nn.BatchNorm2d`` layers, each
        BatchNorm directly after an affine layer.
    h : Tensor
        Inputs of the block, ``(N, *in_shape)``.

    Returns
    -------
    Linearised or None
        ``None`` for any other branch (train-mode BatchNorm, other layers or
        activations, subclasses of the recognised layers): use autodiff then.
    """
    pieces = _pieces(branch)
    if pieces is None:
        return None
    return Linearised(pieces, h.detach())
