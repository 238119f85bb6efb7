"""What every experiment shares: the results folder, the reference data sets, JSON output."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from pathlib import Path

__all__ = ["RESULTS", "use_reference_data", "write_json", "timed_log", "portable_settings"]

RESULTS = Path(__file__).resolve().parent / "results"


def use_reference_data() -> None:
    """Point `$CONVEXNN_SHARED_DATASETS` at the reference data sets beside the repository
    (`../shared/datasets`) unless it is set already; the loaders of `convexnn.data` read it."""
    os.environ.setdefault("CONVEXNN_SHARED_DATASETS",
                          str(Path(__file__).resolve().parents[2] / "shared" / "datasets"))


def write_json(path: Path, payload: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2, default=float) + "\n")


def timed_log(quiet: bool, t_start: float | None = None) -> Callable[[str], None]:
    """`log(msg)`: one progress line `[seconds since t_start] msg` on stdout, unless quiet."""
    t0 = time.perf_counter() if t_start is None else t_start

    def log(msg: str) -> None:
        if not quiet:
            print(f"[{time.perf_counter() - t0:7.1f}s] {msg}", flush=True)
    return log


def portable_settings(args) -> dict:
    """The parsed arguments for a results file, with `out` relative to the repository when it
    lies inside it (no machine's paths in committed results)."""
    settings = dict(vars(args))
    out = settings.get("out")
    if out:
        root = Path(__file__).resolve().parents[1]
        try:
            settings["out"] = str(Path(out).resolve().relative_to(root))
        except ValueError:
            settings["out"] = Path(out).name
    return settings
