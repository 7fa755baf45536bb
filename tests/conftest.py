"""Shared fixtures: small seeded data and models, one thread for reproducibility."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from resalign import models
from resalign.data import Dataset, load_dataset

torch.set_num_threads(1)


@pytest.fixture(scope="session")
def digits() -> Dataset:
    """scikit-learn's 8x8 digits: the fastest real data set."""
    return load_dataset("digits")


def tiny_dataset(n: int = 64, shape=(1, 8, 8), classes: int = 3) -> Dataset:
    """A random data set with ``n`` training and ``n // 2`` test inputs."""
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(n + n // 2, *shape, generator=gen)
    y = torch.arange(n + n // 2) % classes
    return Dataset(
        name="tiny",
        x_train=x[:n],
        y_train=y[:n],
        x_test=x[n:],
        y_test=y[n:],
        num_classes=classes,
        classes=tuple(range(classes)),
    )


def randomise_bn(module: nn.Module, gen: torch.Generator, mild: bool = False) -> None:
    """Give every BatchNorm non-trivial running statistics and affine terms.

    ``mild`` draws them uniformly near the identity (means in +-0.2, variances
    in [0.5, 2], weights in [0.5, 1.5], biases in +-0.3), which keeps random
    conv spectra moderately conditioned; otherwise means, weights and biases
    are standard normal and variances uniform in [0.3, 2.3].
    """
    with torch.no_grad():
        for m in module.modules():
            if not isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
                continue
            c, dtype = m.num_features, m.weight.dtype

            def draw(lo: float, hi: float, c=c, dtype=dtype) -> torch.Tensor:
                if mild:
                    return torch.rand(c, generator=gen, dtype=dtype) * (hi - lo) + lo
                return torch.randn(c, generator=gen, dtype=dtype)

            m.running_mean.copy_(draw(-0.2, 0.2))
            if mild:
                m.running_var.copy_(draw(0.5, 2.0))
            else:
                m.running_var.copy_(torch.rand(c, generator=gen, dtype=dtype) * 2 + 0.3)
            m.weight.copy_(draw(0.5, 1.5))
            m.bias.copy_(draw(-0.3, 0.3))


def conv_branch(
    c_in: int, c_out: int, stride: int, seed: int, mild: bool = False
) -> nn.Sequential:
    """A basic-block branch (conv-BN-ReLU-conv-BN), float64, eval mode, random BN."""
    torch.manual_seed(seed)
    branch = models.conv_branch(c_in, c_out, stride).double()
    randomise_bn(branch, torch.Generator().manual_seed(seed + 100), mild)
    return branch.eval()
