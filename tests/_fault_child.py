"""Child process of tests/test_faults.py (copied to tmp_path and run there).

    python _fault_child.py TRAINER CHECKPOINT RESULT_JSON MODE TESTS_DIR EPOCHS

Trains one tiny float64 problem on one thread with a checkpoint after every epoch (step for
the lagged trainer), resuming from CHECKPOINT when it exists, and writes the final objective,
curve and a parameter digest to RESULT_JSON. Progress goes to stdout, one flushed line each:
``READY`` (training starts), ``FP <fingerprint>`` (first save), ``SAVED <epoch>`` (after each
checkpoint rename), ``DONE``. MODE ``none`` runs to the end; ``half:J`` stalls in the J-th
checkpoint write after half of its bytes are in the temporary file (``HALF``), ``pre:J`` stalls
with the J-th temporary file complete but not yet renamed (``PRE``): the parent SIGKILLs it
there. Nothing in the package is changed: ``torch.save`` / ``os.replace`` are wrapped here.
"""
import hashlib
import io
import json
import os
import sys
import time

import torch

torch.set_num_threads(1)
trainer, ckpt, out, mode, tests_dir, n_epochs = sys.argv[1:7]
n_epochs = int(n_epochs)
sys.path.insert(0, tests_dir)
kind, _, arg = mode.partition(":")
target = int(arg) if arg else 0
ckpt = os.path.abspath(ckpt)


def say(msg):
    sys.stdout.write(msg + "\n")
    sys.stdout.flush()


saves = 0
pending = None
real_save, real_replace = torch.save, os.replace


def save(obj, f, *args, **kwargs):
    """torch.save used by convexnn.train.checkpoint.save_checkpoint; 'half:J' stalls the J-th save
    after writing half its bytes (to the temporary file) so the parent kills it mid-write."""
    global saves, pending
    if not (isinstance(obj, dict) and "fingerprint" in obj):
        return real_save(obj, f, *args, **kwargs)
    saves += 1
    pending = int(next(obj[k] for k in ("epoch", "step", "snapshot") if k in obj))
    if saves == 1:
        say(f"FP {obj['fingerprint']}")
    if kind == "half" and saves == target:
        buf = io.BytesIO()
        real_save(obj, buf, *args, **kwargs)
        data = buf.getvalue()
        f.write(data[:len(data) // 2])
        f.flush()
        os.fsync(f.fileno())
        say("HALF")
        time.sleep(120)
        raise SystemExit("parent did not kill me")
    return real_save(obj, f, *args, **kwargs)


def replace(src, dst, *args, **kwargs):
    """os.replace of the checkpoint: 'pre:J' stalls before the J-th rename (complete temp file
    on disk, not yet the checkpoint); every completed rename prints 'SAVED <epoch or step>'."""
    if os.path.abspath(dst) != ckpt:
        return real_replace(src, dst, *args, **kwargs)
    if kind == "pre" and saves == target:
        say("PRE")
        time.sleep(120)
        raise SystemExit("parent did not kill me")
    real_replace(src, dst, *args, **kwargs)
    say(f"SAVED {pending}")


torch.save = save
os.replace = replace


def digest(module):
    h = hashlib.sha256()
    for k, v in module.state_dict().items():
        h.update(k.encode())
        h.update(v.detach().to(torch.float64).contiguous().numpy().tobytes())
    return h.hexdigest()


def run_dual():
    from helpers import tiny_mnist

    from convexnn import ConvexDualDenoiser
    from convexnn.solve.adam.solver import AdamConfig

    x, y, _, _ = tiny_mnist(n_train=6, crop=12)
    cfg = AdamConfig(epochs=n_epochs, batch_size=2, dtype="float64", device="cpu",
                     kernel="torch", distributed=False, progress=False, patience=10 ** 6,
                     tol=0.0, seed=0, checkpoint_path=ckpt, checkpoint_every=1)
    say("READY")
    m = ConvexDualDenoiser(n_patterns=8, beta=1e-2, seed=0).fit(x, y, solver="adam", config=cfg)
    curve = [[r[k] for k in sorted(r) if "seconds" not in k] for r in m.history_]
    h = hashlib.sha256(m.v_.numpy().tobytes() + m.w_.numpy().tobytes()).hexdigest()
    return {"objective": m.objective_, "curve": curve, "params": h,
            "resumed_from": m.solve_info_.details["resumed_from_epoch"]}


def run_primal():
    from helpers import tiny_mnist

    from convexnn.model.primal import TwoLayerConvDenoiser
    from convexnn.train.primal import PrimalTrainConfig, train_primal

    x, y, _, _ = tiny_mnist(n_train=6, crop=12)
    torch.manual_seed(0)
    model = TwoLayerConvDenoiser(n_filters=8)
    cfg = PrimalTrainConfig(beta=1e-2, lr=1e-2, epochs=n_epochs, batch_size=2, dtype="float64",
                            device="cpu", distributed=False, progress=False,
                            patience=10 ** 6, tol=0.0, reinit_seed=0, seed=0,
                            checkpoint_path=ckpt, checkpoint_every=1)
    say("READY")
    res = train_primal(model, x, y, cfg)
    curve = [[r[k] for k in sorted(r) if "seconds" not in k] for r in res.history]
    return {"objective": res.history[-1]["train_objective"], "curve": curve,
            "params": digest(model), "resumed_from": res.resumed_from}


def run_lagged():
    from convexnn.solvers.energies import DataFidelity, MatrixOperator
    from convexnn.solvers.energy_dissipation import (
        MLP,
        DirectionNetwork,
        HalfSpaceProjection,
        LaggedTrainingConfig,
        TrainingProblem,
        train_lagged,
    )

    gen = torch.Generator().manual_seed(0)
    targets = torch.tensor([0.0, 5.0], dtype=torch.float64) + 0.3 * torch.randn(
        64, 2, generator=gen, dtype=torch.float64)
    op = MatrixOperator(torch.tensor([[1.0, 1.0]], dtype=torch.float64))
    problem = TrainingProblem(targets, targets.sum(1, keepdim=True),
                              lambda f: DataFidelity(op, f, lipschitz=2.0))
    torch.manual_seed(0)
    net = DirectionNetwork(MLP(6, 2, hidden=16).double(), HalfSpaceProjection(0.05, True))
    cfg = LaggedTrainingConfig(steps=n_epochs, batch_size=8, lr=1e-2, regenerate_every=5,
                               max_descent_steps=3, gd_scale=0.5, checkpoint_path=ckpt,
                               checkpoint_every=1)
    say("READY")
    res = train_lagged(net, problem, cfg)
    return {"objective": res.losses[-1], "curve": [res.losses, res.regenerations],
            "params": digest(net), "resumed_from": res.resumed_from}


def run_deq():
    from torch import nn

    from convexnn.solvers.deq import DEQ, DEQConfig
    from convexnn.solvers.deq_train import DEQTrainConfig, train_deq
    from convexnn.solvers.operators import Blur

    f64 = torch.float64
    g = torch.exp(-(torch.arange(5, dtype=f64) - 2) ** 2 / 2)
    kernel = g[:, None] * g[None]
    physics = Blur(kernel / kernel.sum(), in_shape=(1, 8, 8))
    gen = torch.Generator().manual_seed(9)
    x = torch.rand(6, 1, 8, 8, generator=gen, dtype=f64)
    d = physics.A(x) + 0.01 * torch.randn(x.shape, generator=gen, dtype=f64)

    class SmallNet(nn.Module):
        def __init__(self):
            super().__init__()
            torch.manual_seed(9)
            self.l1 = nn.Conv2d(1, 4, 3, padding=1, dtype=f64)
            self.l2 = nn.Conv2d(4, 1, 3, padding=1, dtype=f64)
            with torch.no_grad():
                self.l2.weight.mul_(0.05)

        def forward(self, u, sigma=None):
            return 0.3 * u + self.l2(torch.relu(self.l1(u)))

    deq = DEQ(physics, SmallNet(), DEQConfig(tol=1e-8, anderson_m=3))
    cfg = DEQTrainConfig(epochs=n_epochs, batch_size=2, lr=0.02, progress=False,
                         checkpoint_path=ckpt)
    say("READY")
    res = train_deq(deq, d, x, cfg)
    return {"objective": res.epoch_loss[-1],
            "curve": [res.epoch_loss, res.epoch_psnr, res.forward_iterations],
            "params": digest(deq), "resumed_from": res.resumed_from}


def run_admm():
    """ADMM with a snapshot every 100 iterations and tol=1e-15, so that it runs exactly
    EPOCHS snapshots. Its cone projection warm-starts its working sets, so a resumed run
    agrees to rounding (about 1e-14), not bit for bit: the parent compares with a tolerance."""
    import warnings

    from helpers import tiny_mnist

    from convexnn import ConvexDualDenoiser
    from convexnn.solve.admm.solver import AdmmConfig

    x, y, _, _ = tiny_mnist(n_train=2, crop=12)
    every = 100
    cfg = AdmmConfig(tol=1e-15, max_iter=n_epochs * every, checkpoint_path=ckpt,
                     checkpoint_every=every, allow_inaccurate=True, num_threads=1)
    say("READY")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)     # "returning the inaccurate iterate"
        m = ConvexDualDenoiser(n_patterns=8, beta=1e-2, seed=0).fit(x, y, solver="admm",
                                                                    config=cfg)
    curve = [[r[k] for k in sorted(r) if "seconds" not in k] for r in m.history_]
    start = m.solve_info_.details["resumed_from_iteration"]
    return {"objective": m.objective_, "curve": curve,
            "params": torch.cat([m.v_.flatten(), m.w_.flatten()]).tolist(),
            "resumed_from": start // every if start else None}


t0 = time.perf_counter()
result = {"dual": run_dual, "primal": run_primal, "lagged": run_lagged, "deq": run_deq,
          "admm": run_admm}[trainer]()
result["train_seconds"] = time.perf_counter() - t0
with open(out, "w") as fh:
    json.dump(result, fh)
say("DONE")
