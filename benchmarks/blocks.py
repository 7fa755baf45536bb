"""Random residual branches shared by the benchmarks.

Basic-block branches (Conv-BN-ReLU-Conv-BN and Linear-BN-ReLU-Linear-BN)
with Kaiming-initialised weights and mild random BatchNorm statistics and
affine terms, frozen in eval mode: stand-ins for trained blocks whose top
spectrum is flat, the hard case for iterative solvers.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from resalign import models  # noqa: E402


def randomise_bn(module: nn.Module, seed: int) -> None:
    """Give every BatchNorm mild, non-trivial running statistics and affine terms."""
    gen = torch.Generator().manual_seed(seed)
    for m in module.modules():
        if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
            c = m.num_features
            with torch.no_grad():
                m.running_mean.copy_(0.2 * torch.randn(c, generator=gen))
                m.running_var.copy_(0.5 + torch.rand(c, generator=gen))
                m.weight.copy_(0.5 + torch.rand(c, generator=gen))
                m.bias.copy_(0.2 * torch.randn(c, generator=gen))


def frozen_eval(module: nn.Module, seed: int) -> nn.Module:
    """Kaiming-initialised weights, random BN statistics, eval mode, no grads."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
    randomise_bn(module, seed)
    module.eval()
    for p in module.parameters():
        p.requires_grad_(False)
    return module


def conv_branch(channels: int, seed: int) -> nn.Sequential:
    """A random ``channels -> channels`` 3x3 basic-block branch."""
    torch.manual_seed(seed)
    return frozen_eval(models.conv_branch(channels, channels), seed)


def fc_branch(width: int, seed: int) -> nn.Sequential:
    """A random ``width -> width`` fully-connected basic-block branch."""
    torch.manual_seed(seed)
    return frozen_eval(models.fc_branch(width), seed)
