"""Shared fixtures: small seeded data and models, one thread for reproducibility."""

from __future__ import annotations

import pytest
import torch

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
