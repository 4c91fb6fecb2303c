"""Data-parallel training under torchrun: the same loops run on one process or on N.

torchrun sets WORLD_SIZE/RANK/LOCAL_RANK; `setup()` joins the group (gloo on CPU, nccl on CUDA)
and every other function degrades to a no-op on a single process.
"""
import os

import torch
import torch.distributed as dist


def setup(device):
    """Join the process group torchrun prepared, if any; returns (rank, world_size)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend)
    return rank(), world_size()


def rank():
    return dist.get_rank() if dist.is_initialized() else 0


def world_size():
    return dist.get_world_size() if dist.is_initialized() else 1


def is_main():
    return rank() == 0


def sum_across(values, device):
    """Sum a list of numbers over all processes (exact counts for accuracy, losses)."""
    t = torch.tensor(values, dtype=torch.float64, device=device)
    if dist.is_initialized():
        dist.all_reduce(t)
    return t.tolist()


def barrier():
    if dist.is_initialized():
        dist.barrier()


def wrap(model, device):
    """DistributedDataParallel when running under torchrun, the model itself otherwise."""
    if not dist.is_initialized():
        return model
    ids = [device.index] if device.type == "cuda" else None
    return torch.nn.parallel.DistributedDataParallel(model, device_ids=ids)


def pick_device(name="auto"):
    """'auto' means CUDA when present (one GPU per process under torchrun), else CPU. On CUDA it
    turns on deterministic kernels (see `device.deterministic`), so the same seed gives the same model."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(name)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            from .errors import ConvslimError
            raise ConvslimError("--device cuda was asked for but no CUDA GPU is available")
        if device.index is None:
            device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
        from .device import deterministic
        deterministic(os.environ.get("CONVSLIM_DETERMINISTIC", "1") != "0")
    return device
