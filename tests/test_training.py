"""Training: seeded determinism, history, callback, divergence, bad lengths."""

from __future__ import annotations

import math

import pytest
import torch

from resalign.models import FCResNet
from resalign.training import TrainingDiverged, epochs_for, resolve_device, train

from .conftest import tiny_dataset


def _run(seed: int = 0, **kw):
    data = tiny_dataset()
    torch.manual_seed(0)
    model = FCResNet(data.input_shape, data.num_classes, width=8, depth=2)
    history = train(
        model, data, epochs=3, batch_size=16, seed=seed, progress=False, **kw
    )
    return model, history


def test_same_seed_gives_identical_histories():
    m1, h1 = _run(seed=3)
    m2, h2 = _run(seed=3)
    assert h1.as_dict() == h2.as_dict()
    for a, b in zip(m1.state_dict().values(), m2.state_dict().values(), strict=True):
        assert torch.equal(a, b)


def test_other_seed_changes_the_shuffle():
    _, h1 = _run(seed=3)
    _, h2 = _run(seed=4)
    assert h1.loss != h2.loss


def test_history_and_callback():
    calls = []
    _, h = _run(callback=lambda model, epoch, hist: calls.append(epoch))
    assert calls == [0, 1, 2, 3]
    assert h.epoch == [1, 2, 3] and h.step == [4, 8, 12]
    assert all(0 <= a <= 1 for a in h.train_acc + h.test_acc)


def test_learning_on_digits(digits):
    torch.manual_seed(0)
    model = FCResNet(digits.input_shape, 10, width=32, depth=2)
    h = train(model, digits, epochs=15, progress=False)
    assert h.train_acc[-1] > 0.9 and h.test_acc[-1] > 0.85
    assert not model.training


def test_nan_loss_names_epoch_and_lr():
    data = tiny_dataset()
    model = FCResNet(data.input_shape, data.num_classes, width=8, depth=2)
    with pytest.raises(TrainingDiverged, match=r"epoch \d+ .*lr=1e\+30"):
        train(model, data, epochs=2, lr=1e30, progress=False)


def test_steps_are_converted_to_epochs():
    assert epochs_for(100, 32, steps=8) == 2
    assert epochs_for(100, 32, epochs=5) == 5
    with pytest.raises(ValueError, match="exactly one"):
        epochs_for(100, 32, epochs=1, steps=1)
    with pytest.raises(ValueError, match="exactly one"):
        epochs_for(100, 32)
    with pytest.raises(ValueError, match="positive"):
        epochs_for(100, 32, steps=0)


def test_device_auto_and_bad_device():
    assert resolve_device("auto").type in ("cpu", "cuda")
    with pytest.raises(ValueError, match="auto"):
        resolve_device("tpu9")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA"):
            resolve_device("cuda")
    assert math.isfinite(_run()[1].loss[-1])
