"""Memory available to a solve: one place for the size guards of every solver."""

from __future__ import annotations

import os

import torch

__all__ = ["available_memory"]


def available_memory(device: torch.device | None = None) -> float:
    """Bytes available now: free GPU memory on a CUDA device, else MemAvailable (Linux) or the
    free physical pages; 8 GB when neither can be read."""
    if device is not None and device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return float(free)
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return float(line.split()[1]) * 1024.0
    except OSError:
        pass
    try:
        return float(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES"))
    except (ValueError, OSError, AttributeError):
        return 8e9
