"""Fault injection: SIGKILL training at random points, resume, and get the uninterrupted result.

Every trainer with checkpoints (dual Adam, primal Adam, lagged energy-dissipation training,
DEQ/JFB training) runs in a child process (`_fault_child.py`, copied to tmp_path; float64, one
thread, `checkpoint_every=1`) that the test kills with SIGKILL at points drawn from a seeded
RNG, then restarts until training finishes. Kill points are of three kinds:

* ``delay``: after the child's k-th checkpoint (k = 1..3) plus a random fraction of an epoch,
  so it lands anywhere (in a step, an evaluation, a checkpoint write);
* ``half``: inside the J-th checkpoint write, half of its bytes in the temporary file;
* ``pre``: after the J-th temporary file is complete and synced, before its `os.replace`.

After every kill the checkpoint either does not exist (nothing saved yet) or loads with
`torch.load(weights_only=True)`, passes `load_checkpoint`'s fingerprint check against the
uninterrupted run's fingerprint and holds the last announced epoch (or the next one, for a kill
between rename and announcement); every other file in its folder is a `.NAME.*.tmp` leftover (a
torn one for ``half``); the next run resumes from the checkpoint file, never from a leftover.
The final objective, per-epoch curve and parameters must equal the uninterrupted run's exactly
(ADMM, a snapshot every 100 iterations: to 1e-9 relative, as its cone projection warm-starts
its working sets and so agrees to rounding only).

Default run: one kill per trainer (Adam dual, primal, lagged energy dissipation, DEQ, ADMM).
``pytest -m slow tests/test_faults.py``: 20 kills (4 per trainer, each kind at least once).
"""

from __future__ import annotations

import json
import os
import queue
import random
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch

from convexnn.train.checkpoint import CheckpointMismatchError, load_checkpoint

TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent
TRAINERS = ("dual", "primal", "lagged", "deq", "admm")
WAIT_S = 180.0          # longest wait for one child line / exit (busy 2-core machine)
SEED = 20240909


@dataclass(frozen=True)
class KillPoint:
    kind: str            # "delay" | "half" | "pre"
    saves: int           # delay: after this many checkpoints of the child; half/pre: J
    fraction: float      # delay: extra wait, in epochs (of the uninterrupted run's mean)

    def mode(self) -> str:
        return "none" if self.kind == "delay" else f"{self.kind}:{self.saves}"


def kill_plan(trainer: str, n_kills: int, seed: int = SEED) -> list[KillPoint]:
    """Seeded kill points; with one kill per trainer the five trainers cover all three kinds."""
    rng = random.Random(f"{seed}-{trainer}-{n_kills}")
    if n_kills == 1:
        kinds = [{"dual": "half", "primal": "delay", "lagged": "pre", "deq": "delay",
                  "admm": "delay"}[trainer]]
    else:
        kinds = ["half", "pre"] + ["delay"] * (n_kills - 2)
        rng.shuffle(kinds)
    return [KillPoint(k, rng.randint(1, 3), rng.uniform(0.0, 1.5)) for k in kinds]


def n_epochs(n_kills: int) -> int:
    """Enough epochs that every kill lands before the end (a child advances <= 3 + 1.5 epochs
    before its kill, plus the parent's reaction time)."""
    return 6 * n_kills + 6


class Child:
    """One training process; stdout lines arrive through a reader thread (timeouts on all
    waits); `close()` SIGKILLs it if it is still alive."""

    def __init__(self, script: Path, trainer: str, ckpt: Path, result: Path, mode: str,
                 epochs: int, workdir: Path) -> None:
        env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1",
                   PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
        self.result = result
        self.stderr_path = workdir / f"{result.stem}.stderr"
        self._stderr = open(self.stderr_path, "w")
        self.proc = subprocess.Popen(
            [sys.executable, str(script), trainer, str(ckpt), str(result), mode, str(TESTS),
             str(epochs)],
            stdout=subprocess.PIPE, stderr=self._stderr, text=True, env=env, cwd=workdir)
        self.lines: list[str] = []
        self.times: list[float] = []            # arrival time of each line
        self._q: queue.Queue[tuple[str, float] | None] = queue.Queue()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            self._q.put((line.rstrip("\n"), time.monotonic()))
        self._q.put(None)

    def stderr(self) -> str:
        self._stderr.flush()
        return self.stderr_path.read_text()[-3000:]

    def wait_for(self, predicate) -> str:
        """The first new line that satisfies `predicate` (fails on EOF or after WAIT_S)."""
        deadline = time.monotonic() + WAIT_S
        while True:
            try:
                item = self._q.get(timeout=max(deadline - time.monotonic(), 0.01))
            except queue.Empty:
                raise AssertionError(f"child silent for {WAIT_S}s; lines {self.lines[-5:]}"
                                     ) from None
            if item is None:
                self._q.put(None)
                raise AssertionError(f"child ended (rc {self.proc.wait(WAIT_S)}) before the "
                                     f"kill point; lines {self.lines[-5:]}\n{self.stderr()}")
            self._keep(item)
            if predicate(item[0]):
                return item[0]

    def _keep(self, item: tuple[str, float]) -> None:
        self.lines.append(item[0])
        self.times.append(item[1])

    def _drain(self) -> None:
        self._reader.join(timeout=WAIT_S)
        while True:
            try:
                item = self._q.get_nowait()
            except queue.Empty:
                return
            if item is not None:
                self._keep(item)

    def kill(self) -> None:
        os.kill(self.proc.pid, signal.SIGKILL)
        rc = self.proc.wait(timeout=WAIT_S)
        self._drain()
        assert rc == -signal.SIGKILL, f"child exited with {rc} before the kill"

    def finish(self) -> dict:
        rc = self.proc.wait(timeout=WAIT_S * 2)
        self._drain()
        assert rc == 0, f"child failed (rc {rc}): {self.lines[-5:]}\n{self.stderr()}"
        return json.loads(self.result.read_text())

    def saved(self) -> list[int]:
        return [int(line.split()[1]) for line in self.lines if line.startswith("SAVED ")]

    def save_times(self) -> list[float]:
        return [t for line, t in zip(self.lines, self.times, strict=True)
                if line.startswith("SAVED ")]

    def fingerprint(self) -> str:
        return next(line.split()[1] for line in self.lines if line.startswith("FP "))

    def close(self) -> None:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=WAIT_S)
        self._reader.join(timeout=WAIT_S)
        self.proc.stdout.close()
        self._stderr.close()


@pytest.fixture
def spawn(tmp_path):
    script = tmp_path / "child.py"
    shutil.copyfile(TESTS / "_fault_child.py", script)
    children: list[Child] = []
    counter = iter(range(10 ** 6))

    def start(trainer: str, ckpt: Path, mode: str, epochs: int) -> Child:
        result = tmp_path / f"result{next(counter)}.json"
        child = Child(script, trainer, ckpt, result, mode, epochs, tmp_path)
        children.append(child)
        return child

    yield start
    for child in children:
        child.close()


def _progress(state: dict) -> int:
    return int(next(state[k] for k in ("epoch", "step", "snapshot") if k in state))


def _curve_length(state: dict) -> int:
    """Epochs (steps) recorded in a checkpoint's own history: the trainers' five layouts."""
    if "snapshot" in state:                      # ADMM: one history row per iteration
        return len(state["history"]) // int(state["checkpoint_every"])
    if "history" in state:                       # dual and primal Adam (training.run_loop)
        return len(state["history"])
    if "losses" in state:                        # lagged energy-dissipation training
        return len(state["losses"])
    return len(state["result"]["epoch_loss"])    # DEQ training


def check_checkpoint(ckpt: Path, fp: str, point: KillPoint, saved: list[int], before: int,
                     known_strays: set[str]) -> int:
    """The state on disk after a kill; returns the epoch (step) a restart resumes from."""
    stray_re = re.compile(rf"\.{re.escape(ckpt.name)}\..+\.tmp")
    others = {p.name for p in ckpt.parent.iterdir()} - {ckpt.name}
    bad = sorted(n for n in others if not stray_re.fullmatch(n))
    assert not bad, f"unexpected files next to the checkpoint: {bad}"
    new = others - known_strays
    known_strays |= new
    last = saved[-1] if saved else before
    if not ckpt.exists():
        assert before == 0 and not saved, "the checkpoint vanished"
        progress = 0
    else:
        raw = torch.load(ckpt, weights_only=True)          # a whole, pickle-free file
        assert isinstance(raw, dict) and raw["fingerprint"] == fp
        state = load_checkpoint(ckpt, fp)                  # the package's own check
        progress = _progress(state)
        allowed = {last} if point.kind != "delay" else {last, last + 1}
        assert progress in allowed, (point, progress, saved, before)
        assert _curve_length(state) == progress
    if point.kind == "half":
        (torn,) = new
        with pytest.raises(Exception):                     # noqa: B017 - any load error
            torch.load(ckpt.parent / torn, weights_only=True)
        with pytest.raises(CheckpointMismatchError):
            load_checkpoint(ckpt.parent / torn, fp)
    elif point.kind == "pre":
        (whole,) = new                                     # complete but never renamed
        assert _progress(torch.load(ckpt.parent / whole, weights_only=True)) == progress + 1
    else:
        assert len(new) <= 1
    return progress


def _nth_save(n: int):
    seen = [0]

    def predicate(line: str) -> bool:
        seen[0] += line.startswith("SAVED ")
        return seen[0] == n

    return predicate


def kill_and_resume(spawn, tmp_path: Path, trainer: str, n_kills: int) -> None:
    epochs = n_epochs(n_kills)
    plan = kill_plan(trainer, n_kills)
    # the uninterrupted run (also with a checkpoint per epoch: same code path)
    ref_child = spawn(trainer, tmp_path / "ref" / "c.pt", "none", epochs)
    ref = ref_child.finish()
    fp = ref_child.fingerprint()
    assert ref_child.saved() == list(range(1, epochs + 1))
    assert ref["resumed_from"] is None
    stamps = ref_child.save_times()
    gaps = sorted(b - a for a, b in zip(stamps, stamps[1:], strict=False))
    epoch_s = gaps[len(gaps) // 2]                         # median time per epoch (step)

    ckpt = tmp_path / "run" / "c.pt"
    resume, strays = 0, set()
    for point in plan:
        child = spawn(trainer, ckpt, point.mode(), epochs)
        if point.kind == "delay":
            child.wait_for(_nth_save(point.saves))
            time.sleep(point.fraction * epoch_s)
        else:
            child.wait_for(lambda line, k=point.kind: line == k.upper())
        child.kill()
        saved = child.saved()
        if saved:
            assert saved[0] == resume + 1, f"resumed from {saved[0] - 1}, expected {resume}"
        resume = check_checkpoint(ckpt, fp, point, saved, resume, strays)
        assert resume < epochs, f"{point} came after the last epoch: raise n_epochs()"

    final_child = spawn(trainer, ckpt, "none", epochs)
    final = final_child.finish()
    assert final_child.saved()[0] == resume + 1
    assert final["resumed_from"] == (resume or None)
    assert _progress(load_checkpoint(ckpt, fp)) == epochs
    for key in ("objective", "curve", "params"):
        if trainer == "admm":   # warm-started cone projections: equal to rounding, not bits
            got, want = np.ravel(np.asarray(final[key], float)), np.ravel(np.asarray(ref[key],
                                                                                   float))
            assert np.allclose(got, want, rtol=1e-9, atol=1e-12), f"admm: {key} differs"
        else:
            assert final[key] == ref[key], f"{trainer}: {key} differs from the uninterrupted run"


@pytest.mark.parametrize("trainer", [t if t in ("dual", "primal") else
                                     pytest.param(t, marks=pytest.mark.slow)
                                     for t in TRAINERS])   # the rest: -m slow (time)
def test_kill_resume_one_per_trainer(spawn, tmp_path, trainer):
    kill_and_resume(spawn, tmp_path, trainer, n_kills=1)


@pytest.mark.slow
@pytest.mark.parametrize("trainer", TRAINERS)
def test_kill_resume_twenty_kills(spawn, tmp_path, trainer):
    """4 kills per trainer, 20 in all."""
    kill_and_resume(spawn, tmp_path, trainer, n_kills=4)


def test_kill_plan_is_seeded_and_covers_every_kind():
    one = [p for t in TRAINERS for p in kill_plan(t, 1)]
    assert {p.kind for p in one} == {"delay", "half", "pre"}
    many = {t: kill_plan(t, 4) for t in TRAINERS}
    assert sum(len(v) for v in many.values()) == 20
    for t, plan in many.items():
        assert plan == kill_plan(t, 4)
        assert {p.kind for p in plan} == {"delay", "half", "pre"}
        assert all(1 <= p.saves <= 3 for p in plan)
