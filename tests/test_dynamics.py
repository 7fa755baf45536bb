"""RA measured during training: schedule, recorder, cached trajectories."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from resalign.dynamics import KEPT, Recorder, Trajectory, record, schedule
from resalign.store import Config, CorruptEntry, Store
from resalign.training import train

SMALL = Config(dataset="digits", classes=3, width=8, depth=2, steps=40)


def test_schedule_is_dense_early_and_ends_at_the_last_epoch():
    at = schedule(320, 20)
    assert at[0] == 0 and at[-1] == 320
    assert at == sorted(set(at)) and 15 <= len(at) <= 20
    gaps = np.diff(at)
    assert gaps[0] <= gaps[-1] / 10
    assert schedule(3, 20) == [0, 1, 2, 3]
    with pytest.raises(ValueError, match="epochs >= 1"):
        schedule(0)


def test_first_step_is_where_a_property_starts_to_hold_for_good():
    traj = Trajectory(epoch=[0, 1, 2, 3], step=[0, 10, 20, 30])
    traj.values["coupling"] = [2.0, 0.5, 2.0, 0.5]
    assert traj.first_step("coupling", "<", 1.0) == 30
    traj.values["coupling"] = [0.5, 0.5, 0.5, 0.5]
    assert traj.first_step("coupling", "<", 1.0) == 0
    traj.values["coupling"] = [0.5, 0.5, 0.5, 2.0]
    assert math.isnan(traj.first_step("coupling", "<", 1.0))


def test_recorder_leaves_training_unchanged(digits):
    def run(callback):
        torch.manual_seed(0)
        data = SMALL.load_data()
        model = SMALL.build_model(data)
        train(
            model,
            data,
            steps=SMALL.steps,
            progress=False,
            device="cpu",
            callback=callback,
        )
        return model, data

    plain, data = run(None)
    x, y = data.x_train[:12], data.y_train[:12]
    rec = Recorder(x, y, [0, 2, 5], 10, k=4)
    recorded, _ = run(rec)
    for a, b in zip(
        plain.state_dict().values(), recorded.state_dict().values(), strict=True
    ):
        assert torch.equal(a, b)
    assert rec.trajectory.epoch == [0, 2, 5]
    assert rec.trajectory.step == [0, 20, 50]
    assert all(len(v) == 3 for v in rec.trajectory.values.values())
    assert math.isnan(rec.trajectory.values["test_acc"][0])


def test_record_is_cached_and_saves_the_model(tmp_path):
    store = Store(tmp_path)
    traj = record(
        SMALL,
        points=4,
        inputs_per_class=3,
        k=4,
        store=store,
        device="cpu",
        progress=False,
    )
    assert traj.epoch[0] == 0 and len(traj.step) == 4
    assert set(traj.values) == set(KEPT)
    assert traj.train_seconds > 0 and traj.measure_seconds > 0
    assert SMALL in store
    again = record(
        SMALL,
        points=4,
        inputs_per_class=3,
        k=4,
        store=store,
        device="cpu",
        progress=False,
    )
    assert again.as_dict() == traj.as_dict()
    # the stored model is the one the recorded run ended with
    final = store.load(SMALL, device="cpu")
    assert final.history.train_acc[-1] == pytest.approx(traj.values["train_acc"][-1])


def test_store_results_are_verified_and_recomputed(tmp_path):
    store = Store(tmp_path)
    calls = []

    def compute():
        calls.append(1)
        return {"x": [1.0, float("nan")], "n": len(calls)}

    first = store.result(SMALL, "demo", compute)
    assert first["n"] == 1 and store.result(SMALL, "demo", compute)["n"] == 1
    path = store.result_path(SMALL, "demo")
    path.write_text(path.read_text().replace('"n": 1', '"n": 7'))
    with pytest.raises(CorruptEntry, match="checksum"):
        store.load_result(SMALL, "demo")
    with pytest.warns(UserWarning, match="recomputing"):
        assert store.result(SMALL, "demo", compute)["n"] == 2
    path.write_text(path.read_text()[:40])
    with pytest.warns(UserWarning, match="unreadable"):
        assert store.result(SMALL, "demo", compute)["n"] == 3
    assert store.entries() == []  # results are not model entries
    with pytest.raises(ValueError, match="letters"):
        store.result_path(SMALL, "../evil")


def test_a_killed_computation_leaves_no_result(tmp_path):
    store = Store(tmp_path)

    def boom():
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        store.result(SMALL, "demo", boom)
    assert not store.result_path(SMALL, "demo").exists()
