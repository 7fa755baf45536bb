"""Residual Jacobians of residual blocks, batched over inputs.

A residual block (see ``CONTRACT.md``) is a branch ``F``, a nonlinearity
``post`` applied after the sum and a ``skip`` connection. Its Residual Jacobian
at an input ``h`` is

``J(h) = diag(post'(skip(h) + F(h))) dF/dh (h)``,

a ``(d_out, d_in)`` matrix over the flattened (C order) sample shapes. This
module computes the Jacobians of a whole batch at once:

- :func:`residual_jacobians` returns them as an ``(N, d_out, d_in)`` tensor,
  either in closed form for the fully-connected block
  ``Linear-BatchNorm1d-ReLU-Linear-BatchNorm1d`` (or its BatchNorm-folded
  ``Linear-ReLU-Linear`` form) or by automatic differentiation for any branch;
- :func:`output_mask` returns the diagonal ``post'(skip(h) + F(h))``.

Both rely on the branch mapping samples independently (eval mode), so one
backward (or forward) pass per Jacobian row (column) serves every input.
For large blocks, :mod:`resalign.spectra` finds the top singular triplets
without forming the Jacobians.
"""

from __future__ import annotations

import contextlib
import math
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
from torch import nn

__all__ = [
    "CHUNK_BUDGET",
    "METHODS",
    "POSTS",
    "SKIPS",
    "check_block_args",
    "fc_weights",
    "fold_bn",
    "output_mask",
    "quiet_forward_ad",
    "residual_jacobians",
]

#: Valid values of ``post``.
POSTS = ("relu", None)
#: Valid string/None values of ``skip`` (a callable projection is also valid).
SKIPS = ("identity", None)
#: Valid values of ``method`` in :func:`residual_jacobians`.
METHODS = ("auto", "closed", "autodiff")

Branch = Callable[[torch.Tensor], torch.Tensor]
Skip = Callable[[torch.Tensor], torch.Tensor] | str | None


def check_block_args(post: object, skip: object) -> None:
    """Raise ``ValueError`` unless ``post`` and ``skip`` follow ``CONTRACT.md``.

    Parameters
    ----------
    post : object
        Must be ``"relu"`` or ``None``.
    skip : object
        Must be ``"identity"``, ``None`` or a callable.
    """
    if post not in POSTS:
        raise ValueError(f"post must be one of {POSTS!r}, got {post!r}")
    if not (skip is None or callable(skip) or skip == "identity"):
        raise ValueError(
            f"skip must be 'identity', None or a callable projection, got {skip!r}"
        )


def _skip_output(skip: Skip, h: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """Return ``skip(h)`` with the shape of ``out`` (zeros when there is no skip)."""
    if skip is None:
        return torch.zeros_like(out)
    s = h if skip == "identity" else skip(h)
    if s.shape != out.shape:
        raise ValueError(
            f"skip output has shape {tuple(s.shape)} but the branch output has "
            f"shape {tuple(out.shape)}; an identity skip needs equal shapes"
        )
    return s


@torch.no_grad()
def output_mask(
    branch: Branch, h: torch.Tensor, post: str | None = "relu", skip: Skip = "identity"
) -> torch.Tensor:
    """Diagonal ``post'(skip(h) + F(h))`` of the Residual Jacobians.

    Parameters
    ----------
    branch : callable
        The residual branch F, ``(N, *in_shape) -> (N, *out_shape)``, in eval mode.
    h : Tensor
        Inputs of the block, ``(N, *in_shape)``.
    post : {"relu", None}
        Nonlinearity after the sum; ``None`` gives a mask of ones.
    skip : {"identity", None} or callable
        Skip connection (``None``: the block is ``post(F(h))``).

    Returns
    -------
    Tensor
        ``(N, d_out)`` with the dtype of ``h``: 1 where the ReLU passes
        (``skip(h) + F(h) > 0``), 0 elsewhere; all ones when ``post`` is None.
    """
    check_block_args(post, skip)
    out = branch(h)
    if post is None:
        return torch.ones_like(out).flatten(1)
    total = out + _skip_output(skip, h, out)
    return (total > 0).to(h.dtype).flatten(1)


# --------------------------------------------------------------------------
# Closed form of the fully-connected block
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class _FCWeights:
    """Effective affine maps of an FC branch ``W2' relu(W1' h + b1') + b2'``."""

    w1: torch.Tensor
    b1: torch.Tensor
    w2: torch.Tensor
    b2: torch.Tensor


def _affine(linear: nn.Linear) -> tuple[torch.Tensor, torch.Tensor]:
    weight = linear.weight.detach()
    if linear.bias is None:
        return weight, weight.new_zeros(linear.out_features)
    return weight, linear.bias.detach()


def fold_bn(
    weight: torch.Tensor, bias: torch.Tensor, bn: nn.Module
) -> tuple[torch.Tensor, torch.Tensor]:
    """Fold an eval-mode BatchNorm into the affine map before it.

    ``weight`` is that of a Linear ``(out, in)`` or Conv2d ``(out, in, kh, kw)``
    and ``bias`` its ``(out,)`` bias (zeros if it has none); returns the
    weight and bias of ``bn(layer(x))`` from ``bn``'s running statistics.
    """
    scale = torch.rsqrt(bn.running_var.detach() + bn.eps)
    shift = -bn.running_mean.detach() * scale
    if bn.affine:
        scale = scale * bn.weight.detach()
        shift = shift * bn.weight.detach() + bn.bias.detach()
    per_output = scale.reshape(-1, *[1] * (weight.dim() - 1))
    return weight * per_output, bias * scale + shift


def _bn_usable(bn: nn.Module) -> bool:
    """Whether ``bn`` is a BatchNorm1d that uses fixed running statistics."""
    return (
        isinstance(bn, nn.BatchNorm1d)
        and not bn.training
        and bn.running_mean is not None
        and bn.running_var is not None
    )


def fc_weights(branch: Branch) -> _FCWeights | None:
    """Effective weights of an FC branch, or ``None`` if it has another form.

    Recognised forms: ``Sequential(Linear, BatchNorm1d, ReLU, Linear,
    BatchNorm1d)`` with both BatchNorms in eval mode (running statistics), and
    ``Sequential(Linear, ReLU, Linear)``. Linear layers may have a bias.
    """
    if not isinstance(branch, nn.Sequential):
        return None
    mods = list(branch)
    if len(mods) == 5:
        lin1, bn1, act, lin2, bn2 = mods
        if not (_bn_usable(bn1) and _bn_usable(bn2)):
            return None
    elif len(mods) == 3:
        lin1, act, lin2 = mods
        bn1 = bn2 = None
    else:
        return None
    if not (
        isinstance(lin1, nn.Linear)
        and isinstance(lin2, nn.Linear)
        and isinstance(act, nn.ReLU)
    ):
        return None
    w1, b1 = _affine(lin1)
    w2, b2 = _affine(lin2)
    if bn1 is not None:
        w1, b1 = fold_bn(w1, b1, bn1)
        w2, b2 = fold_bn(w2, b2, bn2)
    return _FCWeights(w1, b1, w2, b2)


def _closed_form(
    weights: _FCWeights, h: torch.Tensor, mask: torch.Tensor
) -> torch.Tensor:
    """``diag(mask) W2' diag(1[W1' h + b1' > 0]) W1'`` for every input."""
    dtype = h.dtype
    w1, b1 = weights.w1.to(dtype), weights.b1.to(dtype)
    w2 = weights.w2.to(dtype)
    hidden = ((h @ w1.T + b1) > 0).to(dtype)  # (N, d_hidden)
    left = mask[:, :, None] * w2 * hidden[:, None, :]  # (N, d_out, d_hidden)
    return left @ w1


# --------------------------------------------------------------------------
# Automatic differentiation
# --------------------------------------------------------------------------


@contextlib.contextmanager
def quiet_forward_ad() -> Iterator[None]:
    """Silence torch's own ``torch.jit.script`` deprecation warning.

    The first forward-mode product in a process loads decompositions that
    call ``torch.jit.script``; the warning is about torch internals, not user
    code.
    """
    with warnings.catch_warnings():
        warnings.filterwarnings(
            "ignore", message=".*torch.jit.script.*", category=FutureWarning
        )
        yield


#: Default budget of one vectorised autodiff chunk, in numbers per tensor.
CHUNK_BUDGET = 2**24


def _basis_chunks(
    shape: tuple[int, ...], like: torch.Tensor, chunk_size: int
) -> Iterator[torch.Tensor]:
    """Unit vectors of a sample shape, ``(c, *shape)`` per chunk of ``chunk_size``."""
    d = math.prod(shape)
    for start in range(0, d, chunk_size):
        stop = min(start + chunk_size, d)
        units = torch.zeros(stop - start, d, dtype=like.dtype, device=like.device)
        units[:, start:stop].fill_diagonal_(1.0)
        yield units.reshape(-1, *shape)


def _jacobian_reverse(branch: Branch, h: torch.Tensor, chunk_size: int) -> torch.Tensor:
    """Per-input Jacobians with one batched backward pass per output coordinate.

    The cotangent ``e_i`` is given to every sample at once: sample n of the
    output depends on sample n of the input only, so the pass returns row i of
    every ``J_n``.
    """
    out, vjp_fn = torch.func.vjp(branch, h)
    n = h.shape[0]

    def rows(unit: torch.Tensor) -> torch.Tensor:
        return vjp_fn(unit.expand_as(out))[0]

    parts = [
        torch.func.vmap(rows)(units)
        for units in _basis_chunks(tuple(out.shape[1:]), h, chunk_size)
    ]
    jac = torch.cat(parts).reshape(-1, n, math.prod(h.shape[1:]))  # (d_out, N, d_in)
    return jac.transpose(0, 1)


def _jacobian_forward(branch: Branch, h: torch.Tensor, chunk_size: int) -> torch.Tensor:
    """Per-input Jacobians with one batched forward pass per input coordinate.

    The tangent ``e_j`` is given to every sample at once, which yields column j
    of every ``J_n`` for a branch that maps samples independently.
    """
    n = h.shape[0]

    def columns(unit: torch.Tensor) -> torch.Tensor:
        return torch.func.jvp(branch, (h,), (unit.expand_as(h),))[1]

    with quiet_forward_ad():
        parts = [
            torch.func.vmap(columns)(units)
            for units in _basis_chunks(tuple(h.shape[1:]), h, chunk_size)
        ]
    jac = torch.cat(parts).reshape(math.prod(h.shape[1:]), n, -1)  # (d_in, N, d_out)
    return jac.permute(1, 2, 0)


def _autodiff(
    branch: Branch, h: torch.Tensor, mask: torch.Tensor, chunk_size: int | None
) -> torch.Tensor:
    """Jacobians by whichever mode needs fewer passes, times the output mask."""
    n, d_out, d_in = h.shape[0], mask.shape[1], math.prod(h.shape[1:])
    if chunk_size is None:
        chunk_size = max(1, CHUNK_BUDGET // (n * max(d_in, d_out)))
    elif (
        isinstance(chunk_size, bool)
        or not isinstance(chunk_size, int)
        or chunk_size < 1
    ):
        raise ValueError(f"chunk_size must be a positive integer, got {chunk_size!r}")
    if d_in < d_out:
        jac = _jacobian_forward(branch, h, chunk_size)
    else:
        jac = _jacobian_reverse(branch, h, chunk_size)
    return mask[:, :, None] * jac


def residual_jacobians(
    branch: Branch,
    h: torch.Tensor,
    post: str | None = "relu",
    skip: Skip = "identity",
    *,
    method: str = "auto",
    chunk_size: int | None = None,
) -> torch.Tensor:
    """Residual Jacobians ``diag(post'(skip(h) + F(h))) dF/dh`` of a batch.

    Parameters
    ----------
    branch : callable
        The residual branch F, ``(N, *in_shape) -> (N, *out_shape)``, in eval
        mode so that samples are mapped independently.
    h : Tensor
        Inputs of the block, ``(N, *in_shape)``.
    post : {"relu", None}, default "relu"
        Nonlinearity after the sum (``None`` for pre-activation blocks).
    skip : {"identity", None} or callable, default "identity"
        Skip connection; a callable is a projection shortcut. It only enters
        the Jacobian through the ReLU mask.
    method : {"auto", "closed", "autodiff"}, default "auto"
        ``"closed"`` uses the closed form of the FC block
        ``Sequential(Linear, BatchNorm1d, ReLU, Linear, BatchNorm1d)`` (eval
        mode) or ``Sequential(Linear, ReLU, Linear)`` and raises for other
        branches; ``"autodiff"`` differentiates any branch with ``torch.func``
        (one batched backward pass per output coordinate, or one batched
        forward pass per input coordinate when ``d_in < d_out``); ``"auto"``
        takes the closed form when the branch matches it.
    chunk_size : int, optional
        Passes vectorised together by the autodiff method. By default as many
        as keep each vectorised tensor under :data:`CHUNK_BUDGET` numbers
        (all of them for small blocks).

    Returns
    -------
    Tensor
        ``(N, d_out, d_in)`` with ``d = prod(shape)`` in C order.

    Raises
    ------
    ValueError
        For an unknown ``post``, ``skip`` or ``method``, a non-positive
        ``chunk_size``, or ``method="closed"`` with a branch that has no closed
        form here.
    """
    check_block_args(post, skip)
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS!r}, got {method!r}")
    weights = fc_weights(branch) if method != "autodiff" and h.dim() == 2 else None
    if method == "closed" and weights is None:
        raise ValueError(
            "method='closed' needs inputs (N, d) and an eval-mode Sequential(Linear, "
            "BatchNorm1d, ReLU, Linear, BatchNorm1d) or Sequential(Linear, ReLU, "
            "Linear) branch; use method='autodiff' for other branches"
        )
    h = h.detach()
    mask = output_mask(branch, h, post, skip)
    with torch.no_grad():  # torch.func ignores it; it keeps parameters out
        if weights is not None:
            return _closed_form(weights, h, mask)
        return _autodiff(branch, h, mask, chunk_size)
