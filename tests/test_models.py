"""Models: shapes, block views, BatchNorm folding, skip=False, stochastic depth."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from resalign.adapters import TorchvisionResNet, as_view
from resalign.models import ConvResNet, FCResNet, build_model, fold_batchnorm


def _warm_bn(model: torch.nn.Module, shape: tuple[int, ...]) -> None:
    """Give BatchNorm non-trivial running statistics and affine parameters."""
    gen = torch.Generator().manual_seed(1)
    model.train()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d)):
                m.weight.uniform_(0.5, 1.5, generator=gen)
                m.bias.uniform_(-0.2, 0.2, generator=gen)
                m.momentum = 0.5
        for _ in range(3):
            model(torch.rand(32, *shape, generator=gen).to(model.classifier.weight))
    model.eval()


def test_fc_shapes_and_blocks():
    model = FCResNet((1, 8, 8), num_classes=5, width=16, depth=3).eval()
    x = torch.rand(7, 1, 8, 8)
    hs = model.representations(x)
    assert len(hs) == 4 and all(h.shape == (7, 16) for h in hs)
    assert model(x).shape == (7, 5)
    assert model.features(x).shape == (7, 16)
    blocks = model.blocks()
    assert len(blocks) == 3
    assert all(b.post == "relu" and b.skip == "identity" for b in blocks)
    assert blocks[0].in_shape == (16,) and blocks[0].out_shape == (16,)


def test_block_view_reproduces_the_forward_pass():
    model = FCResNet((1, 8, 8), 4, width=8, depth=2)
    _warm_bn(model, (1, 8, 8))
    x = torch.rand(5, 1, 8, 8)
    hs = model.representations(x)
    for i, b in enumerate(model.blocks()):
        assert torch.allclose(torch.relu(hs[i] + b.branch(hs[i])), hs[i + 1])


def test_conv_shapes_with_downsampling():
    model = ConvResNet((3, 32, 32), 10, width=8, depth=4, downsample=True).eval()
    hs = model.representations(torch.rand(2, 3, 32, 32))
    assert [tuple(h.shape[1:]) for h in hs] == model.shapes
    assert model.shapes[0] == (8, 16, 16) and model.shapes[-1] == (16, 8, 8)
    skips = [b.skip for b in model.blocks()]
    assert skips[0] == "identity" and callable(skips[2])
    assert model(torch.rand(2, 3, 32, 32)).shape == (2, 10)


def test_conv_view_reproduces_the_downsampling_block():
    model = ConvResNet((1, 12, 12), 3, width=4, depth=2, downsample=True)
    _warm_bn(model, (1, 12, 12))
    x = torch.rand(3, 1, 12, 12)
    hs = model.representations(x)
    b = model.blocks()[1]
    assert torch.allclose(torch.relu(b.skip(hs[1]) + b.branch(hs[1])), hs[2])


@pytest.mark.parametrize(
    "build, shape",
    [
        (lambda: FCResNet((1, 8, 8), 4, width=16, depth=3), (1, 8, 8)),
        (
            lambda: ConvResNet((1, 12, 12), 4, width=4, depth=3, downsample=True),
            (1, 12, 12),
        ),
    ],
)
def test_fold_batchnorm_keeps_the_function(build, shape):
    # In float64, so that what is compared is the folding, not float32 rounding
    # (which exceeded 1e-5 for some random models and inputs).
    torch.manual_seed(0)
    model = build().double()
    _warm_bn(model, shape)
    folded = fold_batchnorm(model)
    assert not any(
        isinstance(m, (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d))
        for m in folded.modules()
    )
    x = torch.rand(9, *shape, generator=torch.Generator().manual_seed(2)).double()
    with torch.no_grad():
        ref, out = model(x), folded(x)
    assert torch.allclose(out, ref, atol=1e-5, rtol=1e-5)
    # the original is untouched
    assert any(isinstance(m, torch.nn.BatchNorm1d) for m in model.modules()) or any(
        isinstance(m, torch.nn.BatchNorm2d) for m in model.modules()
    )


def test_no_skip_blocks_drop_the_identity():
    model = FCResNet((1, 8, 8), 3, width=8, depth=2, skip=False)
    _warm_bn(model, (1, 8, 8))
    x = torch.rand(4, 1, 8, 8)
    hs = model.representations(x)
    b = model.blocks()[0]
    assert b.skip is None
    assert torch.allclose(torch.relu(b.branch(hs[0])), hs[1])


def test_stochastic_depth_only_in_training():
    torch.manual_seed(0)
    model = FCResNet((1, 8, 8), 3, width=8, depth=6, drop_prob=0.5)
    x = torch.rand(64, 1, 8, 8)
    model.train()
    a, b = model(x), model(x)
    assert not torch.allclose(a, b)  # different blocks dropped
    model.eval()
    assert torch.allclose(model(x), model(x))


def test_stochastic_depth_keeps_the_mean_of_the_branch():
    from resalign.models import _Residual

    block = _Residual(nn.Identity(), None, True, drop_prob=0.25)
    x = torch.ones(20_000, 3)
    torch.manual_seed(0)
    out = block.train()(x)[:, 0]  # relu(h + keep * h / (1 - p))
    assert out.unique().tolist() == pytest.approx([1.0, 1 + 1 / 0.75])
    assert float((out == 1.0).float().mean()) == pytest.approx(0.25, abs=0.01)
    assert float(out.mean()) == pytest.approx(2.0, abs=0.02)
    assert torch.equal(block.eval()(x), 2 * x)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"width": 0}, "width"),
        ({"depth": -1}, "depth"),
        ({"num_classes": 0}, "num_classes"),
        ({"drop_prob": 1.0}, "drop_prob"),
    ],
)
def test_bad_model_arguments(kwargs, match):
    args = {"input_shape": (1, 8, 8), "num_classes": 3} | kwargs
    with pytest.raises(ValueError, match=match):
        FCResNet(**args)


def test_unknown_model_name_lists_valid_ones():
    with pytest.raises(ValueError, match="fc, conv"):
        build_model("mlp", (1, 8, 8), 3)


def test_torchvision_adapter_matches_the_model():
    from torchvision.models import resnet18

    torch.manual_seed(0)
    net = resnet18(weights=None, num_classes=7).eval()
    view = as_view(net)
    assert isinstance(view, TorchvisionResNet)
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        hs = view.representations(x)
        assert len(hs) == 9 and len(view.blocks()) == 8
        logits = view.classifier(view.features(x))
        assert torch.allclose(logits, net(x), atol=1e-5)
        for i, b in enumerate(view.blocks()):
            skip = hs[i] if b.skip == "identity" else b.skip(hs[i])
            assert torch.allclose(torch.relu(skip + b.branch(hs[i])), hs[i + 1])


def test_as_view_rejects_unknown_models():
    with pytest.raises(TypeError, match="adapter"):
        as_view(torch.nn.Linear(3, 3))
