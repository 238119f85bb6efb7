"""What every experiment shares: the results folder, the reference data sets, JSON output."""

from __future__ import annotations

import json
import os
from pathlib import Path

__all__ = ["RESULTS", "use_reference_data", "write_json"]

RESULTS = Path(__file__).resolve().parent / "results"


def use_reference_data() -> None:
    """Point `$CONVEXNN_SHARED_DATASETS` at the reference data sets beside the repository
    (`../shared/datasets`) unless it is set already; the loaders of `convexnn.data` read it."""
    os.environ.setdefault("CONVEXNN_SHARED_DATASETS",
                          str(Path(__file__).resolve().parents[2] / "shared" / "datasets"))


def write_json(path: Path, payload: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2, default=float) + "\n")
