"""torch.distributed helpers: DDP under `torchrun` (gloo on CPU, NCCL on GPU).

Both trainers split every global minibatch across processes (`rank::world_size` of the
batch's images) and wrap their parameters in `DistributedDataParallel`, whose gradient
all-reduce averages over processes; each process scales its local loss by `world_size / global
batch pixels`, so the averaged gradient is exactly the single-process gradient of the same
global batch. Launch with

    torchrun --nproc_per_node=2 my_script.py      # CPU: gloo; GPU: NCCL, one GPU per process
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist
from torch import nn

__all__ = ["DistInfo", "setup_distributed", "dist_info", "all_reduce_sum", "all_reduce_max",
           "wrap_ddp", "barrier", "default_device"]


class DistInfo:
    def __init__(self, rank: int = 0, world_size: int = 1, local_rank: int = 0) -> None:
        self.rank, self.world_size, self.local_rank = rank, world_size, local_rank

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def __repr__(self) -> str:
        return f"DistInfo(rank={self.rank}, world_size={self.world_size})"


def setup_distributed(mode: bool | None = None, device: str | torch.device | None = None
                      ) -> DistInfo:
    """Initialise the default process group from torchrun's environment when wanted.

    `mode=None` (auto): distributed iff a group is already initialised or `WORLD_SIZE > 1`.
    The backend is NCCL for CUDA devices and gloo otherwise.
    """
    if mode is False:
        return DistInfo()
    if dist.is_available() and dist.is_initialized():
        return dist_info()
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        if mode is True:
            raise RuntimeError("distributed=True but WORLD_SIZE is not > 1: launch with "
                               "torchrun --nproc_per_node=N ...")
        return DistInfo()
    if not dist.is_available():
        raise RuntimeError("torch.distributed is not available in this torch build")
    dev = torch.device(device) if device is not None else default_device()
    backend = "nccl" if dev.type == "cuda" else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group(backend=backend)
    return dist_info()


def dist_info() -> DistInfo:
    if dist.is_available() and dist.is_initialized():
        return DistInfo(dist.get_rank(), dist.get_world_size(),
                        int(os.environ.get("LOCAL_RANK", "0")))
    return DistInfo()


def default_device() -> torch.device:
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return torch.device("cpu")


def all_reduce_sum(values: torch.Tensor, info: DistInfo) -> torch.Tensor:
    if info.enabled:
        values = values.clone()
        dist.all_reduce(values, op=dist.ReduceOp.SUM)
    return values


def all_reduce_max(values: torch.Tensor, info: DistInfo) -> torch.Tensor:
    if info.enabled:
        values = values.clone()
        dist.all_reduce(values, op=dist.ReduceOp.MAX)
    return values


def wrap_ddp(module: nn.Module, info: DistInfo, device: torch.device) -> nn.Module:
    if not info.enabled:
        return module
    from torch.nn.parallel import DistributedDataParallel as DDP

    ids = [device.index if device.index is not None else info.local_rank] \
        if device.type == "cuda" else None
    return DDP(module, device_ids=ids, broadcast_buffers=False)


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()
