"""Fully-connected and convolutional ResNets that expose their residual blocks.

Every model here offers the same view to the measurement code (see
``CONTRACT.md``):

- ``representations(x)`` returns the list ``[h_0, ..., h_L]``: the output of the
  stem and of every block;
- ``blocks()`` returns one :class:`BlockView` per residual block, holding the
  branch ``F``, the nonlinearity after the sum and the skip connection;
- ``features(x)`` returns the last-layer features fed to the linear
  ``classifier``.

The architectures follow the authors' code (paper notes, "Architectures"):
an FC ResNet of Linear-BN-ReLU-Linear-BN blocks and a conv ResNet of basic
blocks, optionally with one downsampling block halfway. ``skip=False`` removes
every skip connection (the block returns ``relu(F(h))``); ``drop_prob`` turns
on stochastic depth during training.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn
from torchvision.ops import stochastic_depth

from .jacobians import fold_bn

__all__ = [
    "BlockView",
    "ConvResNet",
    "FCResNet",
    "MODELS",
    "build_model",
    "conv_branch",
    "fc_branch",
    "fold_batchnorm",
]

MODELS = ("fc", "conv")

Skip = Callable[[torch.Tensor], torch.Tensor] | str | None


@dataclass(frozen=True)
class BlockView:
    """What the measurement code sees of one residual block.

    Attributes
    ----------
    branch : callable
        The residual branch F, mapping ``(N, *in_shape)`` to ``(N, *out_shape)``.
    post : str or None
        ``"relu"`` when the block applies a ReLU after the sum, else ``None``.
    skip : callable, str or None
        ``"identity"``, ``None`` (no skip connection) or a projection.
    in_shape, out_shape : tuple of int
        Shapes of one sample before and after the block.
    """

    branch: Callable[[torch.Tensor], torch.Tensor]
    post: str | None
    skip: Skip
    in_shape: tuple[int, ...]
    out_shape: tuple[int, ...]


def _check_positive(**values: int) -> None:
    for name, value in values.items():
        if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")


def _check_prob(drop_prob: float) -> None:
    if not 0.0 <= drop_prob < 1.0:
        raise ValueError(f"drop_prob must lie in [0, 1), got {drop_prob!r}")


def fc_branch(width: int) -> nn.Sequential:
    """The branch of an FC block: Linear-BN-ReLU-Linear-BN, ``width -> width``."""
    return nn.Sequential(
        nn.Linear(width, width, bias=False),
        nn.BatchNorm1d(width),
        nn.ReLU(),
        nn.Linear(width, width, bias=False),
        nn.BatchNorm1d(width),
    )


def conv_branch(c_in: int, c_out: int, stride: int = 1) -> nn.Sequential:
    """The branch of a basic block: 3x3 Conv-BN-ReLU-Conv-BN, ``c_in -> c_out``.

    ``stride`` applies to the first convolution (2 in a downsampling block).
    """
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(),
        nn.Conv2d(c_out, c_out, 3, padding=1, bias=False),
        nn.BatchNorm2d(c_out),
    )


class _Residual(nn.Module):
    """``h -> relu(skip(h) + F(h))`` with optional stochastic depth."""

    def __init__(
        self,
        branch: nn.Module,
        skip: nn.Module | None,
        use_skip: bool,
        drop_prob: float,
    ) -> None:
        super().__init__()
        self.branch = branch
        self.shortcut = skip
        self.use_skip = use_skip
        self.drop_prob = drop_prob

    def _skip(self, h: torch.Tensor) -> torch.Tensor:
        return h if self.shortcut is None else self.shortcut(h)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        if not self.use_skip:
            return torch.relu(self.branch(h))
        out = self.branch(h)
        if self.training and self.drop_prob > 0:
            # per input, kept branches scaled by 1 / (1 - p): same mean as at eval
            out = stochastic_depth(out, self.drop_prob, "row", training=True)
        return torch.relu(self._skip(h) + out)

    def view(self, in_shape: tuple[int, ...], out_shape: tuple[int, ...]) -> BlockView:
        if not self.use_skip:
            skip: Skip = None
        elif self.shortcut is None:
            skip = "identity"
        else:
            skip = self.shortcut
        return BlockView(self.branch, "relu", skip, in_shape, out_shape)


class _ResNet(nn.Module):
    """Shared logic: stem, residual blocks, pooling, classifier."""

    stem: nn.Module
    layers: nn.ModuleList
    classifier: nn.Linear
    shapes: list[tuple[int, ...]]

    def representations(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Return ``[h_0, ..., h_L]`` for a batch ``x`` of inputs."""
        hs = [self.stem(x)]
        for layer in self.layers:
            hs.append(layer(hs[-1]))
        return hs

    def pool(self, h: torch.Tensor) -> torch.Tensor:
        """Map the last representation to the classifier's features."""
        return h.flatten(1)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Last-layer features, the input of ``classifier``."""
        return self.pool(self.representations(x)[-1])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))

    def blocks(self) -> list[BlockView]:
        """One :class:`BlockView` per residual block, in depth order."""
        return [
            layer.view(self.shapes[i], self.shapes[i + 1])
            for i, layer in enumerate(self.layers)
        ]

    @property
    def depth(self) -> int:
        """Number of residual blocks L."""
        return len(self.layers)

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, (nn.Linear, nn.Conv2d)):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)


class FCResNet(_ResNet):
    """Fully-connected ResNet of Linear-BN-ReLU-Linear-BN blocks.

    Parameters
    ----------
    input_shape : tuple of int
        Shape of one input, e.g. ``(1, 28, 28)``; it is flattened.
    num_classes : int
        Number of output classes C.
    width : int, default 64
        Width d of every block; the Residual Jacobians are d x d.
    depth : int, default 8
        Number of residual blocks L.
    skip : bool, default True
        ``False`` removes every skip connection (the no-skip ablation).
    drop_prob : float, default 0
        Probability of dropping each block's branch during training, per
        input (stochastic depth, :func:`torchvision.ops.stochastic_depth`:
        kept branches are scaled by 1 / (1 - p)); at evaluation every branch
        is kept unscaled.
    """

    def __init__(
        self,
        input_shape: tuple[int, ...],
        num_classes: int,
        width: int = 64,
        depth: int = 8,
        skip: bool = True,
        drop_prob: float = 0.0,
    ) -> None:
        super().__init__()
        _check_positive(num_classes=num_classes, width=width, depth=depth)
        _check_prob(drop_prob)
        in_features = int(torch.tensor(input_shape).prod())
        self.stem = nn.Sequential(
            nn.Flatten(),
            nn.Linear(in_features, width, bias=False),
            nn.BatchNorm1d(width),
            nn.ReLU(),
        )
        self.layers = nn.ModuleList(
            _Residual(fc_branch(width), None, skip, drop_prob) for _ in range(depth)
        )
        self.classifier = nn.Linear(width, num_classes)
        self.shapes = [(width,)] * (depth + 1)
        self._init_weights()


class ConvResNet(_ResNet):
    """Convolutional ResNet of basic blocks, optionally with one downsampling block.

    A 5x5 stride-2 stem maps the input to ``width`` channels at half resolution;
    basic blocks (3x3 conv-BN-ReLU-3x3 conv-BN) follow. With ``downsample=True``
    block ``depth // 2`` doubles the channels and halves the resolution, with a
    1x1 stride-2 conv + BN on its skip. Average pooling feeds a linear classifier.

    Parameters
    ----------
    input_shape : tuple of int
        ``(channels, height, width)`` of one input.
    num_classes : int
        Number of output classes C.
    width : int, default 16
        Channels of the stem and of the first blocks.
    depth : int, default 4
        Number of residual blocks L.
    downsample : bool, default False
        Insert one downsampling block halfway.
    skip : bool, default True
        ``False`` removes every skip connection.
    drop_prob : float, default 0
        Stochastic-depth drop probability of each block during training.
    """

    def __init__(
        self,
        input_shape: tuple[int, int, int],
        num_classes: int,
        width: int = 16,
        depth: int = 4,
        downsample: bool = False,
        skip: bool = True,
        drop_prob: float = 0.0,
    ) -> None:
        super().__init__()
        _check_positive(num_classes=num_classes, width=width, depth=depth)
        _check_prob(drop_prob)
        if len(input_shape) != 3:
            raise ValueError(f"input_shape must be (C, H, W), got {input_shape!r}")
        if downsample and depth < 2:
            raise ValueError("downsample=True needs depth >= 2")
        channels, height, _ = input_shape
        self.stem = nn.Sequential(
            nn.Conv2d(channels, width, 5, stride=2, padding=2, bias=False),
            nn.BatchNorm2d(width),
            nn.ReLU(),
        )
        side = (height + 1) // 2
        shapes = [(width, side, side)]
        layers = []
        c = width
        for i in range(depth):
            stride = 2 if downsample and i == depth // 2 else 1
            c_out = 2 * c if stride == 2 else c
            shortcut = None
            if stride == 2:
                shortcut = nn.Sequential(
                    nn.Conv2d(c, c_out, 1, stride=2, bias=False), nn.BatchNorm2d(c_out)
                )
                side = (side + 1) // 2
            branch = conv_branch(c, c_out, stride)
            layers.append(_Residual(branch, shortcut, skip, drop_prob))
            shapes.append((c_out, side, side))
            c = c_out
        self.layers = nn.ModuleList(layers)
        self.classifier = nn.Linear(c, num_classes)
        self.shapes = shapes
        self._init_weights()

    def pool(self, h: torch.Tensor) -> torch.Tensor:
        return h.mean(dim=(2, 3))


def build_model(
    kind: str, input_shape: tuple[int, ...], num_classes: int, **options: object
) -> _ResNet:
    """Build a model by name (``"fc"`` or ``"conv"``) with keyword options."""
    if kind == "fc":
        return FCResNet(input_shape, num_classes, **options)  # type: ignore[arg-type]
    if kind == "conv":
        return ConvResNet(input_shape, num_classes, **options)  # type: ignore[arg-type]
    raise ValueError(f"unknown model {kind!r}; valid models: {', '.join(MODELS)}")


def _fold_pair(layer: nn.Module, bn: nn.Module) -> nn.Module:
    """Return a copy of ``layer`` (Linear or Conv2d) with ``bn`` folded in."""
    weight = layer.weight.detach()
    bias = weight.new_zeros(weight.shape[0]) if layer.bias is None else layer.bias
    weight, bias = fold_bn(weight, bias.detach(), bn)
    folded = copy.deepcopy(layer)
    folded.weight = nn.Parameter(weight)
    folded.bias = nn.Parameter(bias)
    return folded


def _fold_sequential(seq: nn.Sequential) -> nn.Sequential:
    modules = list(seq)
    out: list[nn.Module] = []
    i = 0
    while i < len(modules):
        m = modules[i]
        nxt = modules[i + 1] if i + 1 < len(modules) else None
        if isinstance(m, (nn.Linear, nn.Conv2d)) and isinstance(
            nxt, (nn.BatchNorm1d, nn.BatchNorm2d)
        ):
            out.append(_fold_pair(m, nxt))
            i += 2
        else:
            out.append(fold_batchnorm(m) if isinstance(m, nn.Sequential) else m)
            i += 1
    return nn.Sequential(*out)


@torch.no_grad()
def fold_batchnorm(model: nn.Module) -> nn.Module:
    """Return an eval-mode copy of ``model`` with every BatchNorm folded away.

    Each BatchNorm that follows a Linear or Conv2d layer inside an
    ``nn.Sequential`` is merged into that layer's weight and bias using its
    running statistics, so the copy computes the same function as ``model`` in
    eval mode, with per-input Jacobians that no longer depend on the batch.
    """
    model = copy.deepcopy(model).eval()
    for name, child in list(model.named_children()):
        if isinstance(child, nn.Sequential):
            setattr(model, name, _fold_sequential(child))
        else:
            setattr(model, name, fold_batchnorm(child))
    return model
