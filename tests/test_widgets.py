"""The explorers of resalign.widgets on small reports of untrained models."""

from __future__ import annotations

import ipywidgets
import matplotlib
import matplotlib.pyplot as plt
import pytest
import torch
from matplotlib.figure import Figure

from resalign import measure, widgets
from resalign.models import FCResNet

matplotlib.use("Agg")

C = 3


def small_report(depth: int = 2, seed: int = 0):
    """A report of an untrained FC ResNet at 12 random 8x8 inputs (k = 5)."""
    torch.manual_seed(seed)
    model = FCResNet((1, 8, 8), C, width=8, depth=depth).eval()
    gen = torch.Generator().manual_seed(seed)
    x = torch.rand(12, 1, 8, 8, generator=gen)
    y = torch.arange(12) % C
    return measure(model, x, y, k=5)


@pytest.fixture(scope="module")
def by_depth():
    return {2: small_report(2), 3: small_report(3)}


@pytest.fixture(scope="module")
def report(by_depth):
    return by_depth[3]


@pytest.fixture(autouse=True)
def close_figures():
    yield
    plt.close("all")


PNG = b"\x89PNG\r\n\x1a\n"


def _spy(monkeypatch, name):
    """Replace ``widgets.<name>`` by a wrapper that records its first argument."""
    calls = []
    real = getattr(widgets, name)

    def wrapper(value, *args, **kwargs):
        calls.append(value)
        return real(value, *args, **kwargs)

    monkeypatch.setattr(widgets, name, wrapper)
    return calls


def _parts(box, images):
    """The control and the Image widgets of an explorer, checked."""
    assert isinstance(box, ipywidgets.VBox)
    control, *shown = box.children
    assert len(shown) == images
    for image in shown:
        assert isinstance(image, ipywidgets.Image)
        assert image.format == "png" and bytes(image.value).startswith(PNG)
    return control, shown


def test_draw_depth(by_depth):
    paths = widgets.draw_depth_paths(3, by_depth)
    assert isinstance(paths, Figure) and len(paths.axes) == 1
    grid = widgets.draw_depth_grid(3, by_depth)
    assert len(grid.axes) == 3 * 3 + 1  # panels and the colour bar
    assert len(widgets.draw_depth_grid(3, by_depth, top=2).axes) == 2 * 2 + 1


def test_draw_classes(by_depth):
    fig = widgets.draw_classes(2, by_depth)
    assert isinstance(fig, Figure) and len(fig.axes) == 1


def test_draw_block(report):
    fig = widgets.draw_block(2, report)
    assert isinstance(fig, Figure) and len(fig.axes) == 1
    ax = fig.axes[0]
    assert "block 2 of 3" in ax.get_title()
    # 2 other blocks, the median line, first C and the rest, the rank cut
    assert len(ax.get_lines()) == 2 + 1 + 2 + 1
    assert len(ax.get_lines()[3].get_xdata()) == C  # first C highlighted


def test_draw_unknown_value(by_depth, report):
    with pytest.raises(ValueError, match="available: 2, 3"):
        widgets.draw_depth_paths(5, by_depth)
    with pytest.raises(ValueError, match=r"1\.\.3"):
        widgets.draw_block(0, report)


def test_depth_explorer(by_depth, monkeypatch):
    calls = _spy(monkeypatch, "draw_depth_grid")
    control, images = _parts(widgets.depth_explorer(by_depth, value=2), images=2)
    assert isinstance(control, ipywidgets.SelectionSlider)
    assert tuple(control.options) == (2, 3) and control.value == 2
    before = [image.value for image in images]
    control.value = 3
    assert calls == [2, 3]
    assert all(image.value != old for image, old in zip(images, before, strict=True))
    assert plt.get_fignums() == []  # drawn figures are closed


def test_class_explorer(by_depth, monkeypatch):
    calls = _spy(monkeypatch, "draw_classes")
    control, (image,) = _parts(widgets.class_explorer(by_depth), images=1)
    assert isinstance(control, ipywidgets.SelectionSlider)
    assert tuple(control.options) == (2, 3) and control.value == 3
    before = image.value
    control.value = 2
    assert calls == [3, 2] and image.value != before
    assert plt.get_fignums() == []


def test_block_explorer(report, monkeypatch):
    calls = _spy(monkeypatch, "draw_block")
    control, (image,) = _parts(widgets.block_explorer(report), images=1)
    assert isinstance(control, ipywidgets.IntSlider)
    assert (control.min, control.max, control.value) == (1, 3, 1)
    before = image.value
    control.value = 3
    assert calls == [1, 3] and image.value != before
    assert plt.get_fignums() == []


def test_bad_default(by_depth, report):
    with pytest.raises(ValueError, match="not available"):
        widgets.class_explorer(by_depth, value=7)
    with pytest.raises(ValueError, match="not available"):
        widgets.block_explorer(report, value=4)
