"""Give any ResNet-like model the view the measurement code needs.

The measurement code (:func:`resalign.measure`) never looks at a concrete model
class. It asks an object for four things:

- ``representations(x) -> list[Tensor]``: h_0 (after the stem), h_1, ..., h_L;
- ``blocks() -> list[BlockView]``: per residual block, its branch F, the
  nonlinearity after the sum (``"relu"`` or ``None``) and its skip
  (``"identity"``, ``None`` or a projection), with input and output shapes;
- ``features(x) -> Tensor``: the last-layer features;
- ``classifier``: the final ``nn.Linear``.

resalign's own models have these already. :class:`TorchvisionResNet` provides
them for torchvision's ResNet-18/34 (``BasicBlock``); write a small class like
it for another architecture.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import torch
from torch import nn

from .models import BlockView

__all__ = ["ResNetView", "TorchvisionResNet", "as_view"]


@runtime_checkable
class ResNetView(Protocol):
    """The interface that :func:`resalign.measure` uses."""

    classifier: nn.Module

    def representations(self, x: torch.Tensor) -> list[torch.Tensor]: ...

    def blocks(self) -> list[BlockView]: ...

    def features(self, x: torch.Tensor) -> torch.Tensor: ...


class TorchvisionResNet:
    """View of a torchvision ``ResNet`` built from ``BasicBlock`` s.

    Parameters
    ----------
    model : torchvision.models.ResNet
        For example ``torchvision.models.resnet18(weights=None)``; it is put in
        eval mode, so BatchNorm uses its running statistics.
    input_shape : tuple of int, default (3, 224, 224)
        Shape of one input, used to record each block's input and output shape.
    """

    def __init__(
        self, model: nn.Module, input_shape: tuple[int, ...] = (3, 224, 224)
    ) -> None:
        from torchvision.models.resnet import BasicBlock

        self.model = model.eval()
        self.classifier = model.fc
        self._blocks = [
            b
            for stage in (model.layer1, model.layer2, model.layer3, model.layer4)
            for b in stage
        ]
        if not all(isinstance(b, BasicBlock) for b in self._blocks):
            raise ValueError(
                "TorchvisionResNet supports BasicBlock ResNets (resnet18, resnet34); "
                "write an adapter with the same four members for other blocks"
            )
        device = next(model.parameters()).device
        with torch.no_grad():
            hs = self.representations(torch.zeros(1, *input_shape, device=device))
        self._shapes = [tuple(h.shape[1:]) for h in hs]

    def _stem(self, x: torch.Tensor) -> torch.Tensor:
        m = self.model
        return m.maxpool(m.relu(m.bn1(m.conv1(x))))

    def representations(self, x: torch.Tensor) -> list[torch.Tensor]:
        """h_0 (after the max-pool of the stem) and the output of every block."""
        hs = [self._stem(x)]
        for block in self._blocks:
            hs.append(block(hs[-1]))
        return hs

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Globally average-pooled output of the last block."""
        return torch.flatten(self.model.avgpool(self.representations(x)[-1]), 1)

    def blocks(self) -> list[BlockView]:
        """Branch conv-BN-ReLU-conv-BN, ReLU after the sum, identity or projection."""
        views = []
        for i, b in enumerate(self._blocks):
            branch = nn.Sequential(b.conv1, b.bn1, nn.ReLU(), b.conv2, b.bn2).eval()
            skip = "identity" if b.downsample is None else b.downsample.eval()
            views.append(
                BlockView(branch, "relu", skip, self._shapes[i], self._shapes[i + 1])
            )
        return views


def as_view(model: object) -> ResNetView:
    """Return ``model`` itself if it offers the view, else a known adapter."""
    if isinstance(model, ResNetView):
        return model
    try:
        from torchvision.models import ResNet
    except ImportError:  # pragma: no cover - torchvision is a requirement
        ResNet = ()  # type: ignore[assignment]
    if isinstance(model, ResNet):
        return TorchvisionResNet(model)
    raise TypeError(
        f"{type(model).__name__} does not offer representations(), blocks(), "
        "features() and classifier; wrap it in an adapter (see resalign.adapters)"
    )
