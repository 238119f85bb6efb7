"""Kill -9 / resume in a subprocess, and 2-process torchrun DDP == 1 process."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

# Subprocess start-up (torch + convexnn imports) dominates: ~70-190 s per test on the shared
# 2-core machine, so these run with `pytest -m slow`.
pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
TORCHRUN = Path(sys.executable).with_name("torchrun")

SCRIPT = r'''
import json, os, sys, time, torch
sys.path.insert(0, os.environ["ROOT"])
from tests.helpers import tiny_mnist
from convexnn import ConvexDualDenoiser, TwoLayerConvDenoiser
from convexnn.train.primal import PrimalTrainConfig, train_primal
which, out, ckpt, sleep = sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4])
x, y, _, _ = tiny_mnist(n_train=8)
def cb(row, module):
    print("EPOCH", row["epoch"], flush=True)
    time.sleep(sleep)
ck = None if ckpt == "-" else ckpt
if which == "dual":
    m = ConvexDualDenoiser(n_patterns=20, beta=1.0).fit(
        x, y, solver="adam", progress=False, epochs=6, batch_size=4, dtype="float64",
        kernel="torch", checkpoint_path=ck, callback=cb)
    res = {"objective": m.history_[-1]["train_objective"], "v": m.v_.flatten().tolist()}
else:
    torch.manual_seed(0)
    model = TwoLayerConvDenoiser(n_filters=6, dtype=torch.float64)
    r = train_primal(model, x, y, PrimalTrainConfig(beta=1.0, lr=1e-2, epochs=6, batch_size=4,
                     dtype="float64", progress=False, checkpoint_path=ck, callback=cb))
    res = {"objective": r.history[-1]["train_objective"],
           "v": model.conv1.weight.flatten().tolist()}
if int(os.environ.get("RANK", "0")) == 0:
    with open(out, "w") as fh:
        json.dump(res, fh)
'''


def _env():
    env = dict(os.environ, ROOT=str(ROOT), OMP_NUM_THREADS="1",
               PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return env


@pytest.fixture(scope="module")
def script(tmp_path_factory):
    p = tmp_path_factory.mktemp("ddp") / "run.py"
    p.write_text(SCRIPT)
    return p


@pytest.mark.parametrize("which", ["dual", "primal"])
def test_kill9_and_resume(script, tmp_path, which):
    ref = tmp_path / "ref.json"
    subprocess.run([sys.executable, str(script), which, str(ref), "-", "0"], check=True,
                   env=_env(), timeout=120, capture_output=True)
    ck, out = tmp_path / "ck.pt", tmp_path / "out.json"
    proc = subprocess.Popen([sys.executable, str(script), which, str(out), str(ck), "0.5"],
                            env=_env(), stdout=subprocess.PIPE, text=True)
    try:
        for line in proc.stdout:
            if line.startswith("EPOCH 3"):
                break
        time.sleep(0.3)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == -signal.SIGKILL and not out.exists() and ck.exists()
    subprocess.run([sys.executable, str(script), which, str(out), str(ck), "0"], check=True,
                   env=_env(), timeout=120, capture_output=True)
    a, b = json.loads(ref.read_text()), json.loads(out.read_text())
    assert a["objective"] == b["objective"] and a["v"] == b["v"]


@pytest.mark.skipif(not TORCHRUN.exists(), reason="torchrun not installed")
@pytest.mark.parametrize("which", ["dual", "primal"])
def test_torchrun_two_processes_match_one(script, tmp_path, which):
    one, two = tmp_path / "one.json", tmp_path / "two.json"
    subprocess.run([sys.executable, str(script), which, str(one), "-", "0"], check=True,
                   env=_env(), timeout=120, capture_output=True)
    r = subprocess.run([str(TORCHRUN), "--standalone", "--nproc_per_node=2", str(script), which,
                        str(two), "-", "0"], env=_env(), timeout=180, capture_output=True,
                       text=True)
    assert r.returncode == 0, r.stderr[-3000:]
    a, b = json.loads(one.read_text()), json.loads(two.read_text())
    assert abs(a["objective"] - b["objective"]) <= 1e-5 * abs(a["objective"])
    num = max(abs(p - q) for p, q in zip(a["v"], b["v"], strict=True))
    assert num <= 1e-5 * max(abs(p) for p in a["v"])
