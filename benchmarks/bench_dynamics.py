"""Cost of measuring RA during training, against the same training without it.

Trains the chapter "RA during training"'s model twice from the same initial
weights and seed, once plainly and once with a :class:`resalign.dynamics.Recorder`
measuring RA1-RA4 and NC1 at ``--points`` epochs on 10 inputs per class,
alternating in rounds. Prints the ratio (with / without); the goal is <= 1.10.

    python benchmarks/bench_dynamics.py [--steps 12800] [--points 20] [--rounds 1]
"""

from __future__ import annotations

import argparse
import copy
import math
import time

import torch

from resalign.data import first_per_class
from resalign.dynamics import Recorder, schedule
from resalign.store import Config
from resalign.training import epochs_for, train


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=12_800, help="SGD steps")
    parser.add_argument("--points", type=int, default=20, help="measurement points")
    parser.add_argument("--rounds", type=int, default=1, help="alternating rounds")
    args = parser.parse_args()

    torch.set_num_threads(1)
    config = Config(steps=args.steps)
    data = config.load_data()
    model0 = config.build_model(data)
    n = len(data.x_train)
    epochs = epochs_for(n, config.batch_size, steps=config.steps)
    x, y = first_per_class(data.x_train, data.y_train, 10)
    options = dict(steps=config.steps, progress=False, eval_every=10, device="cpu")

    plain_t, with_t, measure_t = [], [], []
    for _ in range(args.rounds):
        t = time.perf_counter()
        train(copy.deepcopy(model0), data, **options)
        plain_t.append(time.perf_counter() - t)

        recorder = Recorder(
            x,
            y,
            schedule(epochs, args.points),
            math.ceil(n / config.batch_size),
            nc_data=(data.x_train, data.y_train),
            test_data=(data.x_test, data.y_test),
        )
        t = time.perf_counter()
        train(copy.deepcopy(model0), data, callback=recorder, **options)
        with_t.append(time.perf_counter() - t)
        measure_t.append(recorder.trajectory.measure_seconds)

    plain, ours = min(plain_t), min(with_t)
    points = len(recorder.trajectory.step)
    print(f"{config.describe()}; {points} points, 100 inputs, 1 torch thread")
    print("| training | best of rounds (s) |")
    print("|---|---|")
    print(f"| plain | {plain:.1f} |")
    print(f"| with RA measured | {ours:.1f} (measuring: {min(measure_t):.1f}) |")
    print(f"\nratio with/without = {ours / plain:.3f} (goal <= 1.10)")


if __name__ == "__main__":
    main()
