"""Checkpoint files: RNG state round trip, weights-only loading, atomic writes, resume lookup."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from atmvideo.engine.checkpoint import (
    CHECKPOINT_FORMAT,
    capture_rng_state,
    find_resume_checkpoint,
    load_checkpoint,
    restore_rng_state,
    save_checkpoint,
    state_dict_is_finite,
)


def _draws() -> tuple:
    return (
        random.random(),
        random.gauss(0, 1),
        float(np.random.rand()),
        float(np.random.randn()),
        torch.rand(3),
    )


def test_rng_state_round_trip_through_a_weights_only_file(tmp_path):
    random.seed(1)
    np.random.seed(2)
    torch.manual_seed(3)
    random.gauss(0, 1)  # leaves a cached gaussian in Python's state
    np.random.randn()  # and one in NumPy's
    state = capture_rng_state()
    save_checkpoint({"rng": [state]}, tmp_path / "rng.pt")
    expected = _draws()
    _draws()  # move every generator on
    restore_rng_state(load_checkpoint(tmp_path / "rng.pt")["rng"][0])
    got = _draws()
    assert got[:4] == expected[:4]
    assert torch.equal(got[4], expected[4])


def test_checkpoint_holds_only_weights_only_types(tmp_path):
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model(torch.randn(4, 3)).sum().backward()
    opt.step()
    path = save_checkpoint(
        {
            "model": model.state_dict(),
            "optimizer": opt.state_dict(),
            "config": {"a": [1, 2.0, None]},
            "rng": [],
        },
        tmp_path / "c.pt",
    )
    ckpt = load_checkpoint(path)
    assert ckpt["format"] == CHECKPOINT_FORMAT
    assert torch.equal(ckpt["model"]["weight"], model.weight.detach())
    assert ckpt["config"] == {"a": [1, 2.0, None]}
    assert not list(tmp_path.glob(".*.tmp"))  # the temporary file was renamed, not left behind


def test_foreign_and_missing_files_are_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_checkpoint(tmp_path / "none.pt")
    torch.save({"weight": torch.zeros(1)}, tmp_path / "plain.pt")
    with pytest.raises(ValueError, match="not an atmvideo training checkpoint.*model.pretrained"):
        load_checkpoint(tmp_path / "plain.pt")
    (tmp_path / "torn.pt").write_bytes(b"PK\x03\x04garbage")
    with pytest.raises(RuntimeError, match="cannot be read as a weights-only checkpoint"):
        load_checkpoint(tmp_path / "torn.pt")


def test_find_resume_checkpoint(tmp_path):
    assert find_resume_checkpoint(tmp_path, None) is None
    assert find_resume_checkpoint(tmp_path, "auto") is None  # a fresh run: nothing to resume
    save_checkpoint({}, tmp_path / "last.pt")
    assert find_resume_checkpoint(tmp_path, "auto") == tmp_path / "last.pt"
    assert find_resume_checkpoint(tmp_path, str(tmp_path / "last.pt")) == tmp_path / "last.pt"
    with pytest.raises(FileNotFoundError, match="--resume"):
        find_resume_checkpoint(tmp_path, str(tmp_path / "other.pt"))


def test_state_dict_is_finite():
    assert state_dict_is_finite({"w": torch.ones(2), "n": torch.tensor(3)})
    assert not state_dict_is_finite({"w": torch.tensor([1.0, float("nan")])})
    assert not state_dict_is_finite({"w": torch.tensor([float("inf")])})
