"""Pattern pricing killed with SIGKILL between rounds resumes from its checkpoint to the same
optimum as an uninterrupted run."""

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

CHILD = r'''
import json, sys, torch
torch.set_num_threads(1)
from convexnn import ConvexDualDenoiser
from convexnn.data import NoiseConfig, add_noise, load_mnist, normalize_mnist
out, ckpt = sys.argv[1], sys.argv[2]
clean = torch.from_numpy(normalize_mnist(load_mnist("test")[:3].astype("float64"))).unsqueeze(1)
noisy = add_noise(clean, NoiseConfig("gaussian", 0.5, seed=0))
m = ConvexDualDenoiser(n_patterns=150, beta=1e-3 * clean.numel()).fit(
    noisy, clean, solver="ipm", pricing=True, pricing_batch=4, progress=True,
    checkpoint_path=None if ckpt == "-" else ckpt)
d = m.solve_info_.details
json.dump({"objective": m.objective_, "status": m.solve_info_.status,
           "rounds": len(d["pricing_rounds"]), "resumed": d["resumed_from_round"],
           "gap": d["certified_gap"], "v": m.v_.flatten().tolist()}, open(out, "w"))
'''


def _run(args, **kw):
    env = dict(os.environ, OMP_NUM_THREADS="1",
               PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.Popen([sys.executable, "-c", CHILD, *args], env=env, **kw)


def test_kill9_between_rounds_resumes_to_the_same_optimum(tmp_path):
    ref = tmp_path / "ref.json"
    assert _run([str(ref), "-"], stderr=subprocess.DEVNULL).wait(timeout=600) == 0
    ck, out = tmp_path / "pricing.ckpt", tmp_path / "out.json"
    proc = _run([str(out), str(ck)], stderr=subprocess.PIPE, text=True)
    try:
        for line in proc.stderr:
            if line.startswith("pricing round 3"):
                break
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == -signal.SIGKILL and ck.exists() and not out.exists()
    assert _run([str(out), str(ck)], stderr=subprocess.DEVNULL).wait(timeout=600) == 0
    a, b = json.loads(ref.read_text()), json.loads(out.read_text())
    assert a["status"] == b["status"] == "optimal" and a["rounds"] >= 5
    assert b["resumed"] >= 3 and b["rounds"] == a["rounds"]
    assert abs(a["objective"] - b["objective"]) <= 1e-9 * abs(a["objective"])
    assert max(abs(p - q) for p, q in zip(a["v"], b["v"], strict=True)) <= 1e-6 * max(
        abs(p) for p in a["v"])
    assert b["gap"] <= 1e-6


DDP = r'''
import json, os, sys, torch
torch.set_num_threads(1)
from convexnn import ConvexDualDenoiser
from convexnn.data import NoiseConfig, add_noise, load_mnist, normalize_mnist
out = sys.argv[1]
clean = torch.from_numpy(normalize_mnist(load_mnist("test")[:4].astype("float64"))).unsqueeze(1)
noisy = add_noise(clean, NoiseConfig("gaussian", 0.5, seed=0))
rank, world = int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
m = ConvexDualDenoiser(n_patterns=120, beta=1e-3 * clean.numel()).fit(
    noisy[rank::world], clean[rank::world], solver="ipm", pricing=True, pricing_batch=8)
d = m.solve_info_.details
if rank == 0:
    json.dump({"objective": m.objective_, "status": m.solve_info_.status,
               "gap": d["certified_gap"], "n_pixels": d["n_pixels"],
               "v": m.v_.flatten().tolist(), "w": m.w_.flatten().tolist()}, open(out, "w"))
'''


@pytest.mark.slow
@pytest.mark.skipif(not Path(sys.executable).with_name("torchrun").exists(),
                    reason="torchrun not installed")
def test_two_processes_each_with_half_the_images_match_one(tmp_path):
    """Under torchrun every process holds half the digits; the Gram, pricing and row searches
    are reduced across processes: the optimum is the one-process optimum to 1e-9."""
    one, two = tmp_path / "one.json", tmp_path / "two.json"
    script = tmp_path / "ddp.py"
    script.write_text(DDP)
    env = dict(os.environ, OMP_NUM_THREADS="1",
               PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    subprocess.run([sys.executable, str(script), str(one)], check=True, env=env, timeout=600,
                   capture_output=True)
    r = subprocess.run([str(Path(sys.executable).with_name("torchrun")), "--standalone",
                        "--nproc_per_node=2", str(script), str(two)], env=env, timeout=900,
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-3000:]
    a, b = json.loads(one.read_text()), json.loads(two.read_text())
    assert a["status"] == b["status"] == "optimal" and a["n_pixels"] == b["n_pixels"] == 3136
    assert abs(a["objective"] - b["objective"]) <= 1e-9 * abs(a["objective"])
    top = max(abs(p) for p in a["v"] + a["w"])
    assert max(abs(p - q) for p, q in zip(a["v"] + a["w"], b["v"] + b["w"], strict=True)
               ) <= 1e-6 * top
    assert a["gap"] <= 1e-6 and b["gap"] <= 1e-6
