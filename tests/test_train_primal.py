import math

import pytest
import torch
from helpers import primal_model, tiny_mnist

from convexnn.train.checkpoint import CheckpointMismatchError
from convexnn.train.loop import TrainingDivergedError
from convexnn.train.primal import PrimalTrainConfig, train_primal


@pytest.fixture(scope="module")
def data():
    return tiny_mnist()



CFG = dict(beta=1.0, lr=1e-2, epochs=5, batch_size=2, progress=False, dtype="float64")


def test_objective_is_eq2_and_decreases(data):
    x, y, xe, ye = data
    model = primal_model()
    res = train_primal(model, x, y, PrimalTrainConfig(**CFG), eval_set=(xe, ye))
    assert res.epochs_run == 5 and res.steps == 10
    h = res.history
    assert h[-1]["train_objective"] < h[0]["train_objective"]
    assert math.isclose(h[-1]["train_objective"], model.objective(x, y, 1.0), rel_tol=1e-10)
    assert math.isclose(h[-1]["test_objective"], model.objective(xe, ye, 1.0), rel_tol=1e-10)
    npix = x.shape[0] * x.shape[2] * x.shape[3]
    assert math.isclose(h[-1]["train_objective_mean"] * npix, h[-1]["train_objective"])


def test_deterministic_and_reinit(data):
    x, y, _, _ = data
    a, b = primal_model(1), primal_model(2)
    train_primal(a, x, y, PrimalTrainConfig(**CFG, reinit_seed=7))
    train_primal(b, x, y, PrimalTrainConfig(**CFG, reinit_seed=7))
    assert torch.equal(a.conv1.weight, b.conv1.weight)


def test_bad_input(data, tmp_path):
    x, y, xe, ye = data
    with pytest.raises(ValueError, match="batch_size=9 is larger"):
        train_primal(primal_model(), x, y, PrimalTrainConfig(**{**CFG, "batch_size": 9}))
    with pytest.raises(ValueError, match="eval_set"):
        train_primal(primal_model(), x, y, PrimalTrainConfig(**CFG),
                     eval_set=(xe[:, :, :8, :8], ye[:, :, :8, :8]))
    ck = tmp_path / "p.pt"
    train_primal(primal_model(), x, y, PrimalTrainConfig(**CFG, checkpoint_path=str(ck)))
    before = ck.read_bytes()
    with pytest.raises(CheckpointMismatchError):
        train_primal(primal_model(m=4), x, y, PrimalTrainConfig(**CFG, checkpoint_path=str(ck)))
    assert ck.read_bytes() == before


def test_resume_exact_and_nan(data, tmp_path):
    x, y, _, _ = data
    full = primal_model()
    train_primal(full, x, y, PrimalTrainConfig(**CFG))
    ck = tmp_path / "p.pt"

    def stop(row, module):
        if row["epoch"] == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train_primal(primal_model(), x, y, PrimalTrainConfig(**CFG, checkpoint_path=str(ck),
                                                       callback=stop))
    resumed = primal_model(5)  # weights come from the checkpoint
    res = train_primal(resumed, x, y, PrimalTrainConfig(**CFG, checkpoint_path=str(ck)))
    assert res.resumed_from == 3
    assert torch.equal(resumed.conv1.weight, full.conv1.weight)

    def poison(row, module):
        if row["epoch"] == 1:
            with torch.no_grad():
                module.conv2.weight.fill_(float("inf"))

    bad = primal_model()
    with pytest.raises(TrainingDivergedError, match="epoch 2"):
        train_primal(bad, x, y, PrimalTrainConfig(**CFG, callback=poison))
    assert bool(torch.isfinite(bad.conv2.weight).all())  # last good weights restored
