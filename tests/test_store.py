"""The store: round trip, atomic writes, recovery from corrupted entries."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch

from resalign.store import Config, Store, atomic_write_json

SMALL = Config(dataset="digits", classes=3, width=8, depth=2, steps=20)


@pytest.fixture()
def store(tmp_path) -> Store:
    return Store(tmp_path / "store")


def _weights(trained):
    return [v.clone() for v in trained.model.state_dict().values()]


def test_round_trip(store):
    first = store.get(SMALL, progress=False, device="cpu")
    pt, meta_path = store.paths(SMALL)
    assert pt.exists() and meta_path.exists()
    meta = json.loads(meta_path.read_text())
    assert meta["config"] == SMALL.as_dict()
    assert meta["command"].endswith(SMALL.key())
    again = store.get(SMALL, progress=False, device="cpu")
    for a, b in zip(_weights(first), _weights(again), strict=True):
        assert torch.equal(a, b)
    np.testing.assert_equal(again.history.as_dict(), first.history.as_dict())
    assert SMALL in store


def test_key_depends_on_every_field():
    keys = {
        SMALL.key(),
        SMALL.replace(seed=1).key(),
        SMALL.replace(width=9).key(),
        SMALL.replace(classes=(0, 1, 2)).key(),
        SMALL.replace(skip=False).key(),
    }
    assert len(keys) == 5
    assert Config(classes=[1, 2]).key() == Config(classes=(1, 2)).key()


@pytest.mark.parametrize("damage", ["truncate", "flip", "delete_pt", "bad_json"])
def test_corrupted_entries_are_rebuilt(store, damage):
    first = store.get(SMALL, progress=False, device="cpu")
    pt, meta_path = store.paths(SMALL)
    if damage == "truncate":
        pt.write_bytes(pt.read_bytes()[:100])
    elif damage == "flip":
        blob = bytearray(pt.read_bytes())
        blob[len(blob) // 2] ^= 0xFF
        pt.write_bytes(bytes(blob))
    elif damage == "delete_pt":
        pt.unlink()
    else:
        meta_path.write_text("{not json")
    assert SMALL not in store
    with pytest.warns(UserWarning, match="rebuilding"):
        again = store.get(SMALL, progress=False, device="cpu")
    assert SMALL in store
    for a, b in zip(_weights(first), _weights(again), strict=True):
        assert torch.equal(a, b)  # retraining is deterministic


def test_half_written_entry_is_ignored(store):
    """A .pt without its .json (killed before the metadata) is not used."""
    store.root.mkdir(parents=True)
    pt, _ = store.paths(SMALL)
    pt.write_bytes(b"half")
    assert SMALL not in store
    store.get(SMALL, progress=False, device="cpu")
    assert SMALL in store


def test_atomic_write_leaves_no_partial_file(tmp_path, monkeypatch):
    target = tmp_path / "x.json"
    atomic_write_json(target, {"a": 1})

    def boom(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError):
        atomic_write_json(target, {"a": 2})
    assert json.loads(target.read_text()) == {"a": 1}
    assert list(tmp_path.iterdir()) == [target]


def test_checkpoints_load_with_weights_only(store, monkeypatch):
    store.get(SMALL, progress=False, device="cpu")
    seen = {}
    real_load = torch.load

    def spy(*args, **kwargs):
        seen.update(kwargs)
        return real_load(*args, **kwargs)

    monkeypatch.setattr(torch, "load", spy)
    store.load(SMALL, device="cpu")
    assert seen.get("weights_only") is True


@pytest.mark.parametrize(
    "fields, match",
    [
        ({"dataset": "imagenet"}, "mnist5k"),
        ({"model": "mlp"}, "fc, conv"),
        ({"width": 0}, "width"),
        ({"depth": -2}, "depth"),
        ({"classes": 11}, "10"),
        ({"classes": (1, 1)}, "duplicate"),
        ({"steps": None}, "exactly one"),
        ({"wdith": 3}, "valid fields"),
    ],
)
def test_bad_configs_fail_before_any_work(fields, match):
    with pytest.raises(ValueError, match=match):
        Config().replace(**fields)
