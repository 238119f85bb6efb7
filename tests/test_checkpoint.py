import os

import pytest
import torch

from convexnn.train.checkpoint import (
    CheckpointMismatchError,
    fingerprint,
    load_checkpoint,
    save_checkpoint,
)


def test_roundtrip_weights_only(tmp_path):
    path = tmp_path / "c.pt"
    state = {"fingerprint": "abc", "epoch": 3, "model": {"v": torch.randn(4, 9)},
             "history": [{"epoch": 1, "x": 0.5}]}
    save_checkpoint(path, state)
    back = load_checkpoint(path, "abc")
    assert back["epoch"] == 3 and torch.equal(back["model"]["v"], state["model"]["v"])
    assert back["history"] == state["history"]
    assert [p.name for p in tmp_path.iterdir()] == ["c.pt"]  # no temp file left


def test_refuses_foreign_and_garbage(tmp_path):
    path = tmp_path / "c.pt"
    save_checkpoint(path, {"fingerprint": "abc", "epoch": 1})
    before = path.read_bytes()
    with pytest.raises(CheckpointMismatchError, match="another configuration"):
        load_checkpoint(path, "xyz")
    assert path.read_bytes() == before
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointMismatchError, match="not a readable"):
        load_checkpoint(bad)


def test_refuses_pickled_objects(tmp_path):
    from fractions import Fraction  # any class outside the weights_only allow-list

    path = tmp_path / "e.pt"
    torch.save({"fingerprint": "a", "obj": Fraction(1, 3)}, path)
    with pytest.raises(CheckpointMismatchError):
        load_checkpoint(path)


def test_fingerprint_sensitivity():
    a = torch.arange(6.0)
    f1 = fingerprint("k", {"lr": 1e-3}, {"x": a})
    assert f1 == fingerprint("k", {"lr": 1e-3}, {"x": a.clone().float()})
    assert f1 != fingerprint("k", {"lr": 2e-3}, {"x": a})
    assert f1 != fingerprint("k", {"lr": 1e-3}, {"x": a + 1})
    assert f1 != fingerprint("j", {"lr": 1e-3}, {"x": a})


def test_atomic_write_keeps_old_on_failure(tmp_path, monkeypatch):
    path = tmp_path / "c.pt"
    save_checkpoint(path, {"fingerprint": "a", "epoch": 1})

    def boom(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError):
        save_checkpoint(path, {"fingerprint": "a", "epoch": 2})
    monkeypatch.undo()
    assert load_checkpoint(path)["epoch"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["c.pt"]
