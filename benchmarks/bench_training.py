"""Overhead of resalign's training loop against a plain hand-written PyTorch loop.

Both loops train the same FC ResNet (same initial weights) on the same data with
the same optimiser, schedule and batch size, alternating in rounds so that
machine noise hits both alike. The ratio plain / resalign is printed: 1.0 means
no overhead, the goal is >= 0.95.

    python benchmarks/bench_training.py [--epochs 5] [--rounds 3]
"""

from __future__ import annotations

import argparse
import copy
import math
import time

import torch
from torch import nn

from resalign.data import load_dataset
from resalign.models import FCResNet
from resalign.training import accuracy, train


def plain_loop(model: nn.Module, x, y, x_test, y_test, epochs: int, seed: int):
    """The baseline: the loop anyone would write by hand."""
    gen = torch.Generator().manual_seed(seed)
    n, bs = len(x), 128
    opt = torch.optim.SGD(model.parameters(), lr=0.1, weight_decay=1e-2)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(
        opt, T_max=epochs * math.ceil(n / bs)
    )
    loss_fn = nn.CrossEntropyLoss()
    for _ in range(epochs):
        model.train()
        order = torch.randperm(n, generator=gen)
        for i in range(0, n, bs):
            idx = order[i : i + bs]
            loss = loss_fn(model(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
    return accuracy(model, x, y), accuracy(model, x_test, y_test)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=5, help="epochs per timing")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds")
    args = parser.parse_args()

    data = load_dataset("mnist5k")
    torch.manual_seed(0)
    model0 = FCResNet(tuple(data.x_train.shape[1:]), data.num_classes)
    plain_t, ours_t = [], []
    for _ in range(args.rounds):
        m = copy.deepcopy(model0)
        t = time.perf_counter()
        plain_loop(
            m, data.x_train, data.y_train, data.x_test, data.y_test, args.epochs, 0
        )
        plain_t.append(time.perf_counter() - t)

        m = copy.deepcopy(model0)
        t = time.perf_counter()
        train(m, data, epochs=args.epochs, progress=False, eval_every=10**9)
        ours_t.append(time.perf_counter() - t)

    plain, ours = min(plain_t), min(ours_t)
    print(f"torch threads: {torch.get_num_threads()}, epochs per timing: {args.epochs}")
    print("| loop | best of rounds (s) | per epoch (s) |")
    print("|---|---|---|")
    print(f"| plain PyTorch | {plain:.3f} | {plain / args.epochs:.4f} |")
    print(f"| resalign.training.train | {ours:.3f} | {ours / args.epochs:.4f} |")
    print(f"\nratio plain/resalign = {plain / ours:.3f} (goal >= 0.95)")


if __name__ == "__main__":
    main()
