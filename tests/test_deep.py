"""Greedy layer-wise convex stacks and unrolled networks (paper Sec. 4.3, Fig. 5b)."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open

from convexnn.cli import main
from convexnn.deep import (
    GreedyConvexStack,
    GreedyStackConfig,
    UnrolledDenoiser,
    is_stack_file,
    load_stack,
    save_stack,
    train_unrolled,
)
from convexnn.interpret import interpret_model
from convexnn.io import load_model, save_model
from convexnn.solve.adam.solver import AdamConfig
from convexnn.train.primal import PrimalTrainConfig

BETA = 0.5


@pytest.fixture(scope="module")
def stack(small_pair):
    noisy, clean = small_pair
    return GreedyConvexStack(n_blocks=3, n_patterns=6, beta=BETA, seed=1).fit(noisy, clean)


def test_greedy_depth_relation_on_the_default_exact_path(stack, small_pair):
    noisy, clean = small_pair
    h = stack.history_
    assert [r["status"] for r in h] == ["optimal"] * 3
    # the default takes the fastest exact path (ipm); CVXPY + Clarabel agrees on block 1
    assert [b.solve_info_.details["solver_choice"]["solver"] for b in stack.blocks_] == \
        ["ipm"] * 3
    ref = GreedyConvexStack(n_blocks=1, n_patterns=6, beta=BETA, seed=1, solver="cvxpy")
    ref.fit(noisy, clean)
    assert ref.history_[0]["dual_objective"] == pytest.approx(h[0]["dual_objective"], rel=1e-5)
    for prev, cur in zip(h, h[1:], strict=False):
        # residual block b: v = w = 0 is feasible, so its optimum is <= the previous data loss
        assert cur["data_loss_before"] == pytest.approx(prev["data_loss_after"], rel=1e-12)
        assert cur["dual_objective"] <= prev["data_loss_after"] * (1 + 1e-6)
        assert cur["data_loss_after"] <= prev["data_loss_after"] * (1 + 1e-6)
    assert stack.objective(noisy, clean, n_blocks=1) == pytest.approx(h[0]["dual_objective"],
                                                                      rel=1e-9)
    # on this problem the depth-2 stack objective is also below depth 1 (not guaranteed)
    assert stack.objective(noisy, clean, n_blocks=2) <= stack.objective(noisy, clean, n_blocks=1)


def test_stack_shapes_chain_and_zero_gap_primal(stack, small_pair):
    noisy, clean = small_pair
    out = stack.predict(noisy)
    assert out.shape == (1, 1, 16, 16) and out.dtype == torch.float64
    chained = stack.blocks_[1].predict(stack.blocks_[0].predict(noisy))
    torch.testing.assert_close(stack.predict(noisy, n_blocks=2), chained)
    torch.testing.assert_close(stack(noisy), out)  # denoiser call convention
    assert [blk.residual for blk in stack.blocks_] == [False, True, True]
    assert [z.shape for _, z in stack.stages(noisy)] == [(1, 1, 16, 16)] * 3
    deep = stack.to_primal()
    assert isinstance(deep, UnrolledDenoiser) and len(deep.blocks) == 3
    assert deep.objective(noisy, clean, BETA) == pytest.approx(stack.objective(noisy, clean),
                                                               rel=1e-7)  # eq. 5 per block
    with pytest.raises(ValueError, match="n_blocks"):
        stack.predict(noisy, n_blocks=4)


def test_stack_is_deterministic_and_accepts_any_solver(stack, small_pair):
    noisy, clean = small_pair
    again = GreedyConvexStack(GreedyStackConfig(n_blocks=3, n_patterns=6, beta=BETA, seed=1))
    again.fit(noisy, clean)
    torch.testing.assert_close(again.predict(noisy), stack.predict(noisy), rtol=0, atol=1e-9)
    assert not any(r["worse_than_zero_block"] for r in stack.history_)
    # a far-from-converged Adam start (huge init) is caught: worse than v = w = 0
    adam = GreedyConvexStack(n_blocks=2, n_patterns=6, beta=(BETA, 2 * BETA), solver="adam",
                             solver_config=AdamConfig(epochs=1, batch_size=1, progress=False,
                                                      device="cpu", kernel="torch",
                                                      init_scale=10.0))
    with pytest.warns(RuntimeWarning, match="not optimal"):
        adam.fit(noisy, clean)
    assert [b.beta for b in adam.blocks_] == [BETA, 2 * BETA]
    assert [b.solve_info_.solver for b in adam.blocks_] == ["adam", "adam"]
    assert adam.history_[1]["worse_than_zero_block"]


def test_stack_save_load_roundtrip(tmp_path, stack, small_pair):
    noisy, clean = small_pair
    path = save_stack(stack, tmp_path / "stack.safetensors")
    with safe_open(str(path), framework="pt") as fh:
        assert fh.metadata()["n_blocks"] == "3"
    assert is_stack_file(path)
    back = load_stack(path)
    torch.testing.assert_close(back.predict(noisy), stack.predict(noisy), rtol=0, atol=0)
    assert back.objective(noisy, clean) == stack.objective(noisy, clean)
    assert back.history_ == stack.history_ and back.config.beta == BETA
    single = save_model(stack.blocks_[0], tmp_path / "one.safetensors")
    assert not is_stack_file(single)
    with pytest.raises(ValueError, match="save_stack"):
        load_stack(single)
    with pytest.raises(ValueError, match="convexnn-model-v1"):
        load_model(path)
    with pytest.raises(FileNotFoundError):
        load_stack(tmp_path / "missing.safetensors")


def test_cli_interpret_reads_a_stack(tmp_path, stack, mnist_digits, capsys):
    path = save_stack(stack, tmp_path / "stack.safetensors")
    out = tmp_path / "out"
    assert main(["interpret", str(path), "--data", "mnist", "--n-images", "2", "--out",
                 str(out), "--quiet", "--clusters", "6"]) == 0
    assert capsys.readouterr().out.count("block ") >= 3
    result = json.loads((out / "interpret.json").read_text())
    assert len(result["blocks"]) == 3 and len(result["block_similarity_to_first"]) == 2
    assert sorted(p.name for p in out.glob("*.png")) == [
        "clusters.png", "filters_block1.png", "filters_block2.png", "filters_block3.png"]


def test_bad_configs_and_unfitted():
    with pytest.raises(ValueError, match="n_blocks"):
        GreedyStackConfig(n_blocks=0)
    with pytest.raises(ValueError, match="one per block"):
        GreedyStackConfig(n_blocks=2, beta=(1.0, 2.0, 3.0))
    with pytest.raises(ValueError, match="beta"):
        GreedyStackConfig(beta=-1.0)
    with pytest.raises(TypeError, match="GreedyStackConfig"):
        GreedyConvexStack({"n_blocks": 2})
    with pytest.raises(RuntimeError, match="not fitted"):
        GreedyConvexStack().predict(torch.zeros(1, 1, 4, 4))
    with pytest.raises(ValueError, match="n_iterations"):
        UnrolledDenoiser(n_iterations=0)
    with pytest.raises(TypeError, match="UnrolledDenoiser"):
        train_unrolled(torch.nn.Linear(2, 2), torch.zeros(1, 1, 4, 4), torch.zeros(1, 1, 4, 4))


def test_unrolled_network_trains_end_to_end(small_pair, tmp_path):
    noisy, clean = (t.float() for t in small_pair)
    net = UnrolledDenoiser(n_iterations=2, n_filters=8)
    assert net(noisy).shape == (1, 1, 16, 16) and len(net.stages(noisy)) == 2
    cfg = PrimalTrainConfig(beta=BETA, epochs=15, batch_size=1, lr=1e-2, progress=False,
                            device="cpu", reinit_seed=0)
    res = train_unrolled(net, noisy, clean, cfg, eval_set=(noisy, clean))
    first, last = res.history[0], res.history[-1]
    assert last["train_objective"] < first["train_objective"]
    assert last["train_objective"] == pytest.approx(net.objective(noisy, clean, BETA), rel=1e-5)
    assert last["test_objective"] == pytest.approx(last["train_objective"])
    twin = UnrolledDenoiser(n_iterations=2, n_filters=8)
    train_unrolled(twin, noisy, clean, cfg)
    torch.testing.assert_close(twin(noisy), net(noisy))  # reinit_seed + batch seed
    result = interpret_model(net, clean, tmp_path / "u", n_clusters=3)
    assert [b["sparsity"]["kind"] for b in result["blocks"]] == ["primal", "primal"]
