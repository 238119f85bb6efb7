import math

import pytest
import torch
from helpers import primal_model, tiny_mnist

from convexnn.train.checkpoint import CheckpointMismatchError
from convexnn.train.polish import PolishConfig, polish_primal
from convexnn.train.primal import PrimalTrainConfig, train_primal


@pytest.fixture(scope="module")
def data():
    return tiny_mnist()



CFG = dict(beta=1.0, inner=10, progress=False, dtype="float64")


def test_polish_lowers_eq2_below_adam_and_history_is_exact(data):
    x, y, xe, ye = data
    model = primal_model()
    train_primal(model, x, y, PrimalTrainConfig(beta=1.0, lr=1e-2, epochs=5, batch_size=2,
                                                progress=False, dtype="float64"))
    adam = model.objective(x, y, 1.0)
    res = polish_primal(model, x, y, PolishConfig(**CFG, max_steps=5), eval_set=(xe, ye))
    h = res.history
    assert math.isclose(h[0]["train_objective"], adam, rel_tol=1e-12)
    assert all(b["train_objective"] <= a["train_objective"] * (1 + 1e-12)
               for a, b in zip(h, h[1:], strict=False))
    # the 5 Adam epochs are far from a minimum: full-batch L-BFGS takes eq. 2 well below them
    assert h[-1]["train_objective"] < 0.9 * adam
    assert math.isclose(h[-1]["train_objective"], model.objective(x, y, 1.0), rel_tol=1e-10)
    assert math.isclose(h[-1]["test_objective"], model.objective(xe, ye, 1.0), rel_tol=1e-10)
    assert res.steps == h[-1]["evaluations"] > 5 and res.epochs_run == len(h) - 1


def test_polish_beats_1000_full_batch_adam_steps_with_fewer_gradients(data):
    x, y, _, _ = data
    adam = primal_model(1, m=4)
    train_primal(adam, x, y, PrimalTrainConfig(beta=1.0, lr=1e-2, epochs=1000, batch_size=4,
                                               patience=1000, progress=False, dtype="float64"))
    model = primal_model(1, m=4)
    res = polish_primal(model, x, y, PolishConfig(**{**CFG, "inner": 50}, max_steps=40,
                                                  tol=1e-10))
    assert res.status == "converged"          # an outer step that no longer lowers eq. 2
    assert res.steps < 1000
    assert model.objective(x, y, 1.0) < adam.objective(x, y, 1.0)


def test_checkpoint_resume_and_mismatch(data, tmp_path):
    x, y, _, _ = data
    ck = tmp_path / "polish.pt"
    a = primal_model(2)
    r1 = polish_primal(a, x, y, PolishConfig(**CFG, max_steps=2, checkpoint_path=str(ck)))
    assert ck.is_file() and len(r1.history) == 3
    b = primal_model(2)        # fresh weights: the checkpoint's replace them
    r2 = polish_primal(b, x, y, PolishConfig(**CFG, max_steps=4, checkpoint_path=str(ck)))
    assert r2.resumed_from == 2 and len(r2.history) == 5
    assert r2.history[:3] == r1.history
    assert r2.history[-1]["train_objective"] <= r1.history[-1]["train_objective"]
    before = ck.read_bytes()
    with pytest.raises(CheckpointMismatchError):
        polish_primal(primal_model(2), x, y, PolishConfig(**{**CFG, "beta": 2.0}, max_steps=4,
                                                    checkpoint_path=str(ck)))
    assert ck.read_bytes() == before
    with pytest.raises(FileExistsError, match="resume=False"):
        polish_primal(primal_model(2), x, y, PolishConfig(**CFG, max_steps=4, resume=False,
                                                    checkpoint_path=str(ck)))


def test_bad_input(data):
    x, y, xe, ye = data
    with pytest.raises(TypeError, match="TwoLayerConvDenoiser"):
        polish_primal(torch.nn.Conv2d(1, 1, 3), x, y, PolishConfig(**CFG))
    with pytest.raises(ValueError, match="max_steps"):
        PolishConfig(max_steps=0)
    with pytest.raises(ValueError, match="beta"):
        PolishConfig(beta=-1.0)
    with pytest.raises(ValueError, match="channel"):
        polish_primal(primal_model(), torch.cat([x, x], 1), y, PolishConfig(**CFG))
    with pytest.raises(TypeError, match="eval_set"):
        polish_primal(primal_model(), x, y, PolishConfig(**CFG), eval_set=xe)
