"""Security: no loader unpickles anything; the command line never writes outside --out.

1. Files carrying a pickle payload (an object whose `__reduce__` creates a marker folder) are
   refused by every loader in the package, and the marker never appears: model files
   (`load_model`, `load_stack`, `is_stack_file`, `load_interpretable`, `convexnn gap|interpret`),
   checkpoints (`load_checkpoint`, even with the right fingerprint, and the resume path of every
   trainer with checkpoints), and `.npy`/`.npz` data (`load_images`, `load_image_pairs`,
   `load_levin_kernels`, `convexnn fit|interpret`). Positive controls show that the same files
   do run the payload when loaded unsafely, so the refusals are not vacuous. A static scan
   checks that every `torch.load` has `weights_only=True`, every `np.load` `allow_pickle=False`,
   and that nothing calls pickle/dill/joblib/marshal/shelve/yaml loaders.
   (`tests/test_io_gap_cli.py` covers `load_model` on a `torch.save` file; `tests/
   test_checkpoint.py` a non-allow-listed class in `load_checkpoint`.)
2. `convexnn demo|fit|interpret` refuse an `--out` that is an existing file, or a folder holding
   files they do not write (exit 2, clear message, nothing written, before any solve) unless
   `--force`; a rerun into the folder of an earlier run is allowed; a symbolic link among the
   output names is replaced, never written through.
"""

from __future__ import annotations

import ast
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from convexnn import ConvexDualDenoiser, TwoLayerConvDenoiser
from convexnn.cli import main
from convexnn.io import load_model, save_model
from convexnn.train.checkpoint import CheckpointMismatchError, load_checkpoint

ROOT = Path(__file__).resolve().parents[1]
FP = "0" * 64


class Payload:
    """Unpickling this runs `os.mkdir(marker)`."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (os.mkdir, (self.marker,))


def _evil_state(marker: Path) -> dict:
    """Checkpoint-shaped, with the fingerprint a loader may expect, plus the payload."""
    return {"fingerprint": FP, "kind": "dual-adam", "epoch": 1, "step": 1, "model": {},
            "payload": Payload(marker)}


def write_torch(path: Path, marker: Path) -> Path:
    torch.save(_evil_state(marker), path)            # zip container, as torch.save writes
    return path


def write_legacy_pickle(path: Path, marker: Path) -> Path:
    with open(path, "wb") as fh:                     # a bare pickle stream
        pickle.dump(_evil_state(marker), fh, protocol=2)
    return path


WRITERS = {"torch_save": write_torch, "bare_pickle": write_legacy_pickle}


def _object_array(marker: Path) -> np.ndarray:
    arr = np.empty((1, 4, 4), dtype=object)
    arr[0, 0, 0] = Payload(marker)
    return arr


@pytest.fixture
def marker(tmp_path):
    m = tmp_path / "PWNED"
    yield m
    assert not m.exists(), "the pickle payload ran"


@pytest.fixture(scope="module")
def good(tmp_path_factory, mnist_digits):
    """A tiny fitted dual model, a primal model and clean pairs (real MNIST crops)."""
    d = tmp_path_factory.mktemp("good")
    clean = mnist_digits[:2, 9:19, 9:19]
    noisy = clean + 0.3 * np.random.default_rng(0).standard_normal(clean.shape)
    np.savez(d / "pairs.npz", noisy=noisy, clean=clean)
    dual = ConvexDualDenoiser(n_patterns=4, beta=0.05, seed=0).fit(
        torch.from_numpy(noisy[:, None]), torch.from_numpy(clean[:, None]))
    torch.manual_seed(0)
    return {"dir": d, "pairs": d / "pairs.npz",
            "dual": save_model(dual, d / "dual.safetensors"),
            "primal": save_model(TwoLayerConvDenoiser(n_filters=3), d / "primal.safetensors")}


def _cli_refuses(argv: list[str], capsys, message: str) -> None:
    assert main(argv) == 2
    assert message in capsys.readouterr().err


# ---------------------------------------------------------------------- positive controls
def test_payload_runs_when_loaded_unsafely(tmp_path):
    torch.load(write_torch(tmp_path / "c.pt", tmp_path / "control_torch"), weights_only=False)
    assert (tmp_path / "control_torch").is_dir()
    with open(write_legacy_pickle(tmp_path / "c.pkl", tmp_path / "control_pickle"), "rb") as fh:
        pickle.load(fh)
    assert (tmp_path / "control_pickle").is_dir()
    m = tmp_path / "control_npy"
    np.save(tmp_path / "c.npy", _object_array(m), allow_pickle=True)
    np.load(tmp_path / "c.npy", allow_pickle=True)
    assert m.is_dir()


# ---------------------------------------------------------------------- model files
def _model_loaders(good, tmp_path, capsys):
    from convexnn.deep import is_stack_file, load_stack
    from convexnn.interpret import load_interpretable

    def cli_gap(path):
        _cli_refuses(["gap", str(path), "--pairs", str(good["pairs"])], capsys,
                     "not a convexnn safetensors model")

    def cli_interpret(path):
        _cli_refuses(["interpret", str(path), "--data", "mnist", "--out", str(tmp_path / "o"),
                      "--quiet"], capsys, "not a convexnn safetensors model")

    return {"load_model": load_model, "load_stack": load_stack, "is_stack_file": is_stack_file,
            "load_interpretable": load_interpretable, "cli gap": cli_gap,
            "cli interpret": cli_interpret}


@pytest.mark.parametrize("fmt", sorted(WRITERS))
def test_model_loaders_refuse_pickles(fmt, good, tmp_path, marker, capsys):
    path = WRITERS[fmt](tmp_path / "model.safetensors", marker)
    before = path.read_bytes()
    for name, loader in _model_loaders(good, tmp_path, capsys).items():
        if name.startswith("cli"):
            loader(path)
        else:
            with pytest.raises(ValueError, match="not a convexnn safetensors model"):
                loader(path)
        assert not marker.exists(), name
    assert path.read_bytes() == before
    assert not (tmp_path / "o").exists()


# ---------------------------------------------------------------------- checkpoints
def _tiny_images():
    g = torch.Generator().manual_seed(0)
    clean = torch.rand(2, 1, 6, 6, generator=g, dtype=torch.float64)
    return clean + 0.1 * torch.randn(clean.shape, generator=g, dtype=torch.float64), clean


def _resume_dual(path):
    x, y = _tiny_images()
    ConvexDualDenoiser(n_patterns=3, beta=1.0).fit(
        x, y, solver="adam", checkpoint_path=str(path), epochs=1, batch_size=1,
        kernel="torch", dtype="float64", device="cpu", progress=False, distributed=False)


def _resume_primal(path):
    from convexnn.train.primal import train_primal

    x, y = _tiny_images()
    train_primal(TwoLayerConvDenoiser(n_filters=2), x, y, checkpoint_path=str(path), epochs=1,
                 batch_size=1, device="cpu", progress=False, distributed=False)


def _resume_unrolled(path):
    from convexnn.deep import UnrolledDenoiser, train_unrolled
    from convexnn.train.primal import PrimalTrainConfig

    x, y = _tiny_images()
    train_unrolled(UnrolledDenoiser(n_iterations=1, n_filters=2), x, y,
                   PrimalTrainConfig(checkpoint_path=str(path), epochs=1, batch_size=1,
                                     device="cpu", progress=False))


def _resume_lagged(path):
    from convexnn.solvers.energies import DataFidelity, MatrixOperator
    from convexnn.solvers.energy_dissipation import (
        MLP,
        DirectionNetwork,
        HalfSpaceProjection,
        LaggedTrainingConfig,
        TrainingProblem,
        train_lagged,
    )

    t = torch.rand(4, 2, dtype=torch.float64)
    op = MatrixOperator(torch.tensor([[1.0, 1.0]], dtype=torch.float64))
    problem = TrainingProblem(t, t.sum(1, keepdim=True),
                              lambda f: DataFidelity(op, f, lipschitz=2.0))
    net = DirectionNetwork(MLP(6, 2, hidden=4).double(), HalfSpaceProjection(0.05, True))
    train_lagged(net, problem, LaggedTrainingConfig(steps=1, checkpoint_path=path))


def _resume_deq(path):
    from torch import nn

    from convexnn.solvers.deq import DEQ, DEQConfig
    from convexnn.solvers.deq_train import DEQTrainConfig, train_deq
    from convexnn.solvers.operators import Blur

    physics = Blur(torch.full((3, 3), 1 / 9, dtype=torch.float64), in_shape=(1, 6, 6))
    x, _ = _tiny_images()

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(1, 1, 3, padding=1, dtype=torch.float64)

        def forward(self, u, sigma=None):
            return 0.5 * u + 0.01 * self.conv(u)

    train_deq(DEQ(physics, Net(), DEQConfig()), physics.A(x), x,
              DEQTrainConfig(epochs=1, batch_size=2, progress=False, checkpoint_path=path))


CHECKPOINT_LOADERS = {
    "load_checkpoint": lambda p: load_checkpoint(p),
    "load_checkpoint(fingerprint)": lambda p: load_checkpoint(p, FP),
    "dual adam resume": _resume_dual,
    "primal adam resume": _resume_primal,
    "unrolled adam resume": _resume_unrolled,
    "lagged energy-dissipation resume": _resume_lagged,
    "deq resume": _resume_deq,
}


@pytest.mark.parametrize("fmt", sorted(WRITERS))
@pytest.mark.parametrize("loader", list(CHECKPOINT_LOADERS))
def test_checkpoint_loaders_refuse_pickles(loader, fmt, tmp_path, marker):
    path = WRITERS[fmt](tmp_path / "ckpt.pt", marker)
    before = path.read_bytes()
    with pytest.raises(CheckpointMismatchError, match="not a readable convexnn checkpoint"):
        CHECKPOINT_LOADERS[loader](path)
    assert path.read_bytes() == before                 # refused, and left untouched
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt.pt"]


# ---------------------------------------------------------------------- .npy / .npz data
def test_array_loaders_refuse_object_arrays(tmp_path, marker, good, capsys):
    from convexnn.data import load_image_pairs, load_images
    from convexnn.data.restoration import LEVIN_DIR, load_levin_kernels

    evil = _object_array(marker)
    np.save(tmp_path / "evil.npy", evil, allow_pickle=True)
    np.savez(tmp_path / "one.npz", clean=evil)
    np.savez(tmp_path / "pairs.npz", noisy=evil, clean=evil)
    levin = tmp_path / "root" / LEVIN_DIR
    levin.mkdir(parents=True)
    np.savez(levin / "levin09_kernels_derived.npz", **{f"kernel_{i}": evil for i in range(8)})
    pickles = "allow_pickle=False"                     # numpy's refusal message
    calls = {
        "load_images(.npy)": lambda: load_images(tmp_path / "evil.npy"),
        "load_images(.npz)": lambda: load_images(tmp_path / "one.npz"),
        "load_images(.npz, key)": lambda: load_images(tmp_path / "pairs.npz", key="clean"),
        "load_image_pairs(.npz)": lambda: load_image_pairs(tmp_path / "pairs.npz"),
        "load_levin_kernels": lambda: load_levin_kernels(root=tmp_path / "root"),
    }
    for name, call in calls.items():
        with pytest.raises(ValueError, match=pickles):
            call()
        assert not marker.exists(), name
    out = str(tmp_path / "out")
    _cli_refuses(["fit", "--pairs", str(tmp_path / "pairs.npz"), "--out", out], capsys, pickles)
    _cli_refuses(["fit", "--clean", str(tmp_path / "evil.npy"), "--sigma", "0.1", "--out", out],
                 capsys, pickles)
    _cli_refuses(["gap", str(good["dual"]), "--pairs", str(tmp_path / "pairs.npz")], capsys,
                 pickles)
    _cli_refuses(["interpret", str(good["primal"]), "--data", str(tmp_path / "one.npz"),
                  "--out", out, "--quiet"], capsys, pickles)
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------------- static scan
UNSAFE_CALLS = {"pickle.load", "pickle.loads", "pickle.Unpickler", "dill.load", "dill.loads",
                "cloudpickle.load", "cloudpickle.loads", "joblib.load", "marshal.load",
                "marshal.loads", "shelve.open", "yaml.load", "yaml.unsafe_load",
                "torch.jit.load", "pd.read_pickle", "pandas.read_pickle"}
UNSAFE_MODULES = {"pickle", "dill", "cloudpickle", "joblib", "marshal", "shelve"}


def _keyword(call: ast.Call, name: str):
    for kw in call.keywords:
        if kw.arg == name and isinstance(kw.value, ast.Constant):
            return kw.value.value
    return None


def test_no_unsafe_deserialisation_in_the_sources():
    bad = []
    files = [p for d in ("convexnn", "solvers", "experiments", "benchmarks")
             for p in sorted((ROOT / d).rglob("*.py"))]
    assert len(files) > 20
    for path in files:
        rel = path.relative_to(ROOT)
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] in \
                    UNSAFE_MODULES and any(a.name in ("load", "loads", "Unpickler", "open")
                                           for a in node.names):
                bad.append(f"{rel}:{node.lineno}: from {node.module} import a loader")
            if not isinstance(node, ast.Call):
                continue
            name = ast.unparse(node.func)
            if name in UNSAFE_CALLS:
                bad.append(f"{rel}:{node.lineno}: {name}()")
            elif name == "torch.load" and _keyword(node, "weights_only") is not True:
                bad.append(f"{rel}:{node.lineno}: torch.load without weights_only=True")
            elif name in ("np.load", "numpy.load") and _keyword(node, "allow_pickle") is not False:
                bad.append(f"{rel}:{node.lineno}: np.load without allow_pickle=False")
    assert not bad, "\n".join(bad)


# ---------------------------------------------------------------------- CLI: no overwrites
DEMO = ["demo", "--n-train", "1", "--n-test", "1", "--patterns", "4", "--quiet"]


def _no_solve(monkeypatch):
    def fail(*args, **kwargs):
        raise AssertionError("the command solved before checking --out")

    monkeypatch.setattr(ConvexDualDenoiser, "fit", fail)


def _listing(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def test_cli_refuses_a_nonempty_out_folder_before_solving(tmp_path, good, capsys, monkeypatch):
    out = tmp_path / "results"
    out.mkdir()
    (out / "model.safetensors").write_bytes(b"an earlier, precious model")
    (out / "notes.txt").write_text("mine")
    before = _listing(out)
    _no_solve(monkeypatch)
    for argv in (DEMO + ["--out", str(out)],
                 ["fit", "--pairs", str(good["pairs"]), "--patterns", "3", "--out", str(out)],
                 ["interpret", str(good["dual"]), "--data", "mnist", "--n-images", "2",
                  "--out", str(out), "--quiet"]):
        _cli_refuses(argv, capsys, "notes.txt)")
        assert _listing(out) == before
    main(DEMO + ["--out", str(out)])
    assert "--force" in capsys.readouterr().err


def test_cli_refuses_an_out_path_that_is_a_file(tmp_path, good, capsys, monkeypatch):
    victim = tmp_path / "important.txt"
    victim.write_text("keep me")
    _no_solve(monkeypatch)
    for extra in ([], ["--force"]):
        _cli_refuses(DEMO + ["--out", str(victim), *extra], capsys, "not a folder")
        _cli_refuses(["interpret", str(good["dual"]), "--data", "mnist", "--n-images", "2",
                      "--out", str(victim), "--quiet", *extra], capsys, "not a folder")
        _cli_refuses(DEMO + ["--out", str(victim / "sub"), *extra], capsys, "cannot create")
    assert victim.read_text() == "keep me"


def test_cli_rerun_overwrites_in_the_folder_only(tmp_path, good, capsys):
    out = tmp_path / "results"
    out.mkdir()
    assert main(DEMO + ["--out", str(out)]) == 0             # an existing empty folder is fine
    first = _listing(out)
    assert set(first) == {"demo.json", "reconstructions.png", "model.safetensors"}
    capsys.readouterr()
    (out / "notes.txt").write_text("mine")                    # a foreign file: refused
    _cli_refuses(DEMO + ["--out", str(out), "--seed", "1"], capsys, "pass --force")
    assert _listing(out) == {**first, "notes.txt": b"mine"}
    (out / "notes.txt").unlink()
    victims = {}
    for name in ("demo.json", "reconstructions.png"):  # links to files elsewhere
        victims[name] = tmp_path / f"victim_{name}"
        victims[name].write_text("outside the output folder")
        (out / name).unlink()
        (out / name).symlink_to(victims[name])
    assert main(DEMO + ["--out", str(out), "--seed", "1"]) == 0   # a rerun: no --force needed
    for name, victim in victims.items():
        assert victim.read_text() == "outside the output folder"
        assert not (out / name).is_symlink() and (out / name).stat().st_size > 100
    assert _listing(out)["model.safetensors"] != first["model.safetensors"]
    assert isinstance(load_model(out / "model.safetensors"), ConvexDualDenoiser)


def test_cli_interpret_force_and_gap_writes_nothing(tmp_path, good, capsys, monkeypatch):
    out = tmp_path / "interp"
    args = ["interpret", str(good["dual"]), "--data", "mnist", "--n-images", "2", "--clusters",
            "2", "--out", str(out), "--quiet"]
    assert main(args) == 0
    written = sorted(p.name for p in out.iterdir())
    assert "interpret.json" in written
    capsys.readouterr()
    assert main(args) == 0                                    # a rerun overwrites its own files
    (out / "notes.txt").write_text("mine")
    _cli_refuses(args, capsys, "pass --force")
    assert main(args + ["--force"]) == 0
    assert (out / "notes.txt").read_text() == "mine"
    (out / "notes.txt").unlink()
    assert sorted(p.name for p in out.iterdir()) == written
    before = sorted(p.name for p in good["dir"].iterdir())
    monkeypatch.chdir(out)
    assert main(["gap", str(good["dual"]), "--pairs", str(good["pairs"]), "--json"]) == 0
    assert sorted(p.name for p in good["dir"].iterdir()) == before
    assert sorted(p.name for p in out.iterdir()) == written
