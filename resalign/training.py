"""One seeded training loop with progress, history and a per-epoch callback.

The defaults are the authors' (paper notes, "Training"): SGD without momentum,
learning rate 0.1, weight decay 1e-2 on all parameters, a cosine schedule and
cross-entropy. The loop knows nothing about Residual Alignment; chapters that
measure during training pass a callback.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from .data import Dataset

__all__ = ["History", "TrainingDiverged", "resolve_device", "seed_everything", "train"]

Callback = Callable[[nn.Module, int, "History"], None]


class TrainingDiverged(RuntimeError):
    """Raised when the training loss becomes NaN or infinite."""


@dataclass
class History:
    """Per-epoch record of a training run.

    Attributes
    ----------
    epoch, step : list of int
        Epoch number (1-based) and the number of SGD steps taken by its end.
    loss : list of float
        Mean training loss over the epoch.
    train_acc, test_acc : list of float
        Accuracy at the end of the epoch (eval mode; ``test_acc`` is NaN when
        the test set is empty or not evaluated at that epoch).
    """

    epoch: list[int] = field(default_factory=list)
    step: list[int] = field(default_factory=list)
    loss: list[float] = field(default_factory=list)
    train_acc: list[float] = field(default_factory=list)
    test_acc: list[float] = field(default_factory=list)

    def as_dict(self) -> dict[str, list]:
        """Return the history as a JSON-ready dict of lists."""
        return {k: list(v) for k, v in self.__dict__.items()}

    @classmethod
    def from_dict(cls, d: dict[str, list]) -> History:
        """Inverse of :meth:`as_dict`."""
        return cls(**{k: list(d[k]) for k in cls.__dataclass_fields__})


def seed_everything(seed: int) -> torch.Generator:
    """Seed Python, NumPy and torch; return a torch generator for shuffling."""
    random.seed(seed)
    np.random.seed(seed % 2**32)  # noqa: NPY002 - seeds code we do not own
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """Map ``"auto"`` to CUDA when present, else the CPU; check other names."""
    if isinstance(device, torch.device):
        return device
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError as err:
        raise ValueError(
            f"unknown device {device!r}; use 'auto', 'cpu', 'cuda' or 'cuda:N'"
        ) from err
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' was asked for but CUDA is not available")
    return dev


@torch.no_grad()
def accuracy(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 2048
) -> float:
    """Fraction of inputs classified correctly, in eval mode."""
    if len(x) == 0:
        return float("nan")
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    correct = 0
    for i in range(0, len(x), batch_size):
        out = model(x[i : i + batch_size].to(device))
        correct += int((out.argmax(1).cpu() == y[i : i + batch_size]).sum())
    model.train(was_training)
    return correct / len(x)


def train(
    model: nn.Module,
    data: Dataset,
    *,
    epochs: int | None = None,
    steps: int | None = None,
    batch_size: int = 128,
    lr: float = 0.1,
    momentum: float = 0.0,
    weight_decay: float = 1e-2,
    seed: int = 0,
    device: str | torch.device = "auto",
    callback: Callback | None = None,
    eval_every: int = 1,
    progress: bool = True,
) -> History:
    """Train ``model`` on ``data`` with SGD, a cosine schedule and cross-entropy.

    Parameters
    ----------
    model : nn.Module
        The network; trained in place and left in eval mode.
    data : Dataset
        Training and test tensors from :func:`resalign.data.load_dataset`.
    epochs, steps : int, optional
        Length of training: give exactly one. ``steps`` (SGD steps) is
        converted to whole epochs, rounding up, so that data sets of different
        sizes can be trained for comparable numbers of updates.
    batch_size, lr, momentum, weight_decay : optional
        Optimiser settings (defaults: the authors').
    seed : int, default 0
        Seeds initialisation-independent randomness: shuffling, stochastic
        depth. The same seed gives identical histories on the CPU at a fixed
        thread count.
    device : str, default "auto"
        ``"auto"`` uses CUDA when available.
    callback : callable, optional
        Called as ``callback(model, epoch, history)`` after every epoch (and
        once with epoch 0 before training), with the model in eval mode.
    eval_every : int, default 1
        Evaluate train and test accuracy every this many epochs (and at the end).
    progress : bool, default True
        Show a tqdm progress bar.

    Returns
    -------
    History
        Per-epoch loss and accuracies.

    Raises
    ------
    TrainingDiverged
        If the loss becomes NaN or infinite; the message names the epoch and
        the learning rate.
    """
    n = len(data.x_train)
    batches_per_epoch = math.ceil(n / batch_size)
    epochs = epochs_for(n, batch_size, epochs=epochs, steps=steps)
    dev = resolve_device(device)
    gen = seed_everything(seed)
    model.to(dev)
    x_train, y_train = data.x_train.to(dev), data.y_train.to(dev)
    opt = torch.optim.SGD(
        model.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay
    )
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(
        opt, T_max=epochs * batches_per_epoch
    )
    loss_fn = nn.CrossEntropyLoss()
    history = History()
    if callback is not None:
        model.eval()
        callback(model, 0, history)

    bar = tqdm(range(1, epochs + 1), desc="training", disable=not progress, unit="ep")
    for epoch in bar:
        model.train()
        order = torch.randperm(n, generator=gen).to(dev)
        total = torch.zeros((), device=dev)
        for i in range(0, n, batch_size):
            idx = order[i : i + batch_size]
            loss = loss_fn(model(x_train[idx]), y_train[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total += loss.detach() * len(idx)
        mean_loss = float(total) / n
        if not math.isfinite(mean_loss):
            raise TrainingDiverged(
                f"training loss became {mean_loss} at epoch {epoch} with lr={lr}; "
                "lower the learning rate or check the inputs"
            )

        model.eval()
        history.epoch.append(epoch)
        history.step.append(epoch * batches_per_epoch)
        history.loss.append(mean_loss)
        evaluate = epoch % eval_every == 0 or epoch == epochs
        nan = float("nan")
        history.train_acc.append(accuracy(model, x_train, y_train) if evaluate else nan)
        test_acc = accuracy(model, data.x_test, data.y_test) if evaluate else nan
        history.test_acc.append(test_acc)
        bar.set_postfix(loss=f"{mean_loss:.3f}", train=f"{history.train_acc[-1]:.3f}")
        if callback is not None:
            callback(model, epoch, history)
    model.eval()
    return history


def epochs_for(
    n: int, batch_size: int, *, epochs: int | None = None, steps: int | None = None
) -> int:
    """Number of epochs for a run given either ``epochs`` or ``steps``."""
    if (epochs is None) == (steps is None):
        raise ValueError("give exactly one of epochs= or steps=")
    if batch_size <= 0:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    if n == 0:
        raise ValueError("the training set is empty")
    if steps is not None:
        if steps <= 0:
            raise ValueError(f"steps must be positive, got {steps}")
        return math.ceil(steps / math.ceil(n / batch_size))
    if epochs <= 0:
        raise ValueError(f"epochs must be positive, got {epochs}")
    return epochs
