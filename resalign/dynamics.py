"""Residual Alignment measured while a network trains.

A :class:`Recorder` is a training callback: at a few chosen epochs it measures
the model with :func:`resalign.measure` on fixed inputs and keeps the headline
numbers (RA1-RA4, NC1, accuracies) and the time it spent. :func:`record`
trains a store configuration with a recorder attached and caches the
resulting :class:`Trajectory` in the store, so that the chapter reads it
instead of training again.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from .data import first_per_class
from .measurement import measure
from .store import Config, Store, Trained, default_store
from .training import History, accuracy, epochs_for, resolve_device

__all__ = ["Recorder", "Trajectory", "record", "schedule"]

#: Numbers kept at every point (keys of ``Report.summary()`` plus accuracies).
KEPT = (
    "line_shape_score",
    "step_cv",
    "principal_share",
    "coupling",
    "coupling_random",
    "rank_median",
    "inv_sigma_r2",
    "inv_sigma_slope",
    "sigma1_mean",
    "nc1",
    "train_acc",
    "test_acc",
)


def schedule(epochs: int, points: int = 20) -> list[int]:
    """Epochs at which to measure: 0 (initialisation), then denser early.

    The points are spaced evenly in ``log(1 + epoch)`` from 0 to ``epochs``;
    duplicates after rounding are dropped, so short runs get fewer points.

    Parameters
    ----------
    epochs : int
        Length of training in epochs (the last point).
    points : int, default 20
        Number of points wanted, including 0 and ``epochs``.

    Returns
    -------
    list of int
        Sorted, distinct epochs in ``[0, epochs]``.
    """
    if epochs < 1 or points < 2:
        raise ValueError(f"need epochs >= 1 and points >= 2, got {epochs}, {points}")
    grid = np.expm1(np.linspace(0.0, math.log1p(epochs), points))
    return sorted({int(round(e)) for e in grid} | {0, epochs})


@dataclass
class Trajectory:
    """Headline numbers of a network at several points of its training.

    Attributes
    ----------
    epoch, step : list of int
        Where each point was taken (epoch 0 / step 0 is the initialisation).
    values : dict of str to list of float
        One list per name in :data:`KEPT`, aligned with ``step``.
    train_seconds, measure_seconds : float
        Wall time spent training (callback excluded) and measuring.
    """

    epoch: list[int] = field(default_factory=list)
    step: list[int] = field(default_factory=list)
    values: dict[str, list[float]] = field(
        default_factory=lambda: {k: [] for k in KEPT}
    )
    train_seconds: float = 0.0
    measure_seconds: float = 0.0

    @property
    def overhead(self) -> float:
        """Measuring time as a fraction of training time."""
        return self.measure_seconds / self.train_seconds

    def __getitem__(self, name: str) -> np.ndarray:
        """The values of ``name`` (a :data:`KEPT` name or ``"coupling_ratio"``)."""
        if name == "coupling_ratio":
            return self["coupling"] / self["coupling_random"]
        return np.asarray(self.values[name], dtype=float)

    def first_step(self, name: str, op: str, threshold: float) -> float:
        """First step from which ``name op threshold`` holds at every later point.

        NaN if the property does not hold at the last point.
        """
        v = self[name]
        ok = v < threshold if op == "<" else v > threshold
        if not ok[-1]:
            return math.nan
        bad = np.flatnonzero(~ok)
        return float(self.step[0] if len(bad) == 0 else self.step[bad[-1] + 1])

    def as_dict(self) -> dict:
        """JSON-ready form."""
        return {
            "epoch": list(self.epoch),
            "step": list(self.step),
            "values": {k: list(v) for k, v in self.values.items()},
            "train_seconds": self.train_seconds,
            "measure_seconds": self.measure_seconds,
        }

    @classmethod
    def from_dict(cls, d: dict) -> Trajectory:
        """Inverse of :meth:`as_dict`."""
        return cls(
            epoch=list(d["epoch"]),
            step=list(d["step"]),
            values={k: list(d["values"][k]) for k in KEPT},
            train_seconds=float(d["train_seconds"]),
            measure_seconds=float(d["measure_seconds"]),
        )


class Recorder:
    """Training callback that measures RA at chosen epochs.

    Parameters
    ----------
    inputs, labels : Tensor
        The inputs at which RA is measured (e.g. 10 per class) and their labels.
    at : iterable of int
        Epochs at which to measure (0 = before training).
    steps_per_epoch : int
        SGD steps in one epoch, to convert epochs into steps.
    nc_data : (x, y), optional
        Data for NC1 (default: ``inputs, labels``).
    test_data : (x, y), optional
        Held-out data whose accuracy is recorded (NaN when absent or empty).
    k : int, default 30
        Singular triplets per block.
    """

    def __init__(
        self,
        inputs: torch.Tensor,
        labels: torch.Tensor,
        at: list[int],
        steps_per_epoch: int,
        *,
        nc_data: tuple[torch.Tensor, torch.Tensor] | None = None,
        test_data: tuple[torch.Tensor, torch.Tensor] | None = None,
        k: int = 30,
    ) -> None:
        self.inputs, self.labels = inputs, labels
        self.at = set(at)
        self.steps_per_epoch = steps_per_epoch
        self.nc_data = nc_data or (inputs, labels)
        self.test_data = test_data
        self.k = k
        self.trajectory = Trajectory()

    def __call__(self, model: nn.Module, epoch: int, history: History) -> None:
        if epoch not in self.at:
            return
        start = time.perf_counter()
        dev = next(model.parameters()).device
        report = measure(
            model,
            self.inputs.to(dev),
            self.labels.to(dev),
            k=self.k,
            nc_data=tuple(t.to(dev) for t in self.nc_data),
        )
        summary = report.summary()
        summary["train_acc"] = accuracy(model, *self.nc_data)
        test = self.test_data
        summary["test_acc"] = (
            accuracy(model, *test) if test is not None and len(test[0]) else math.nan
        )

        traj = self.trajectory
        traj.epoch.append(epoch)
        traj.step.append(epoch * self.steps_per_epoch)
        for name in KEPT:
            traj.values[name].append(float(summary[name]))
        traj.measure_seconds += time.perf_counter() - start


def _result_name(points: int, inputs_per_class: int, k: int) -> str:
    return f"dynamics-p{points}-n{inputs_per_class}-k{k}"


def record(
    config: Config,
    *,
    points: int = 20,
    inputs_per_class: int = 10,
    k: int = 30,
    store: Store | None = None,
    device: str = "auto",
    progress: bool = True,
) -> Trajectory:
    """Train ``config`` while measuring RA at ``points`` epochs; cached.

    The measurement inputs are the first ``inputs_per_class`` training inputs
    of every class (as in :func:`resalign.measure_trained`); NC1 and the
    training accuracy use the whole training set. The trained model is saved
    in the store too when it is not there yet (the callback does not change
    training: it runs in eval mode without gradients and uses its own random
    generators).

    Parameters
    ----------
    config : Config
        What to train (a store configuration).
    points : int, default 20
        Measurement points, see :func:`schedule`.
    inputs_per_class, k : int
        Measurement inputs per class and singular triplets per block.
    store : Store, optional
        Where the trajectory is cached (default: the book's store).
    device : str, default "auto"
        Training device.
    progress : bool, default True
        Show the training progress bar.

    Returns
    -------
    Trajectory
    """
    store = store or default_store()
    if points < 2:
        raise ValueError(f"points must be at least 2, got {points}")

    def compute() -> dict:
        data = config.load_data()
        model = config.build_model(data)
        n = len(data.x_train)
        epochs = epochs_for(
            n, config.batch_size, epochs=config.epochs, steps=config.steps
        )
        x, y = first_per_class(data.x_train, data.y_train, inputs_per_class)
        recorder = Recorder(
            x,
            y,
            schedule(epochs, points),
            math.ceil(n / config.batch_size),
            nc_data=(data.x_train, data.y_train),
            test_data=(data.x_test, data.y_test),
            k=k,
        )
        dev = resolve_device(device)
        if progress:
            print(
                f"training {config.describe()} on {dev}, measuring RA "
                f"at {len(recorder.at)} points"
            )
        start = time.perf_counter()
        history = config.train(model, data, dev, progress=progress, callback=recorder)
        total = time.perf_counter() - start
        traj = recorder.trajectory
        traj.train_seconds = total - traj.measure_seconds
        if config not in store:
            store.save(Trained(model, data, history, config), total, str(dev))
        return traj.as_dict()

    name = _result_name(points, inputs_per_class, k)
    return Trajectory.from_dict(store.result(config, name, compute))
