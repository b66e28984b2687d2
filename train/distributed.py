"""Process-group setup for runs under torchrun (NCCL on CUDA, gloo on CPU) and cross-process helpers.

torchrun sets RANK, LOCAL_RANK and WORLD_SIZE; without them the run is a single process and nothing
here talks to other processes.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn

from ulffn_deploy.errors import UlffnError


@dataclass(frozen=True)
class DistEnv:
    """Where this process sits in the run."""

    rank: int
    local_rank: int
    world_size: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def _env_int(name: str, default: int) -> int:
    try:
        return int(os.environ.get(name, default))
    except ValueError as exc:
        raise UlffnError(f"environment variable {name}={os.environ[name]!r} is not an integer") from exc


def select_device(preference: str, local_rank: int = 0) -> torch.device:
    """cuda:LOCAL_RANK when asked for or ('auto') available, else the CPU."""
    if preference == "cuda" and not torch.cuda.is_available():
        raise UlffnError("--device cuda, but PyTorch sees no CUDA GPU", "use --device cpu or install a CUDA build of torch")
    if preference == "cpu" or not torch.cuda.is_available():
        return torch.device("cpu")
    if local_rank >= torch.cuda.device_count():
        raise UlffnError(f"process {local_rank} on this node has no GPU ({torch.cuda.device_count()} visible)",
                         "start at most one process per GPU (torchrun --nproc_per_node)")
    return torch.device("cuda", local_rank)


def setup(preference: str = "auto") -> DistEnv:
    """Join the process group torchrun describes (if any) and pick this process's device."""
    world_size = _env_int("WORLD_SIZE", 1)
    rank, local_rank = _env_int("RANK", 0), _env_int("LOCAL_RANK", 0)
    device = select_device(preference, local_rank)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if world_size > 1 and not dist.is_initialized():
        if device.type == "cuda":
            dist.init_process_group(backend="nccl", device_id=device)
        else:
            dist.init_process_group(backend="gloo")
    return DistEnv(rank=rank, local_rank=local_rank, world_size=world_size, device=device)


def cleanup() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def all_reduce_sum(tensor: Tensor) -> Tensor:
    """Sum over processes in place (a no-op in a single process)."""
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


class _AllReduceSum(torch.autograd.Function):
    """Sum over processes whose backward sums the gradients over processes too."""

    @staticmethod
    def forward(ctx: Any, tensor: Tensor) -> Tensor:
        total = tensor.clone()
        dist.all_reduce(total, op=dist.ReduceOp.SUM)
        return total

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> Tensor:
        total = grad.clone()
        dist.all_reduce(total, op=dist.ReduceOp.SUM)
        return total


def differentiable_sum(tensor: Tensor) -> Tensor:
    result: Tensor = _AllReduceSum.apply(tensor)
    return result


class GlooSyncBatchNorm(nn.BatchNorm2d):
    """BatchNorm2d normalising with the statistics of the whole global batch, for CPU (gloo) runs.

    torch's SyncBatchNorm refuses CPU tensors. Each process computes its count, mean and sum of squared
    deviations (two-pass, exact); one differentiable all-reduce in float64 combines them (Chan et al.'s
    parallel variance), and its backward sums the statistics' gradients over processes, as SyncBatchNorm
    does.
    """

    def forward(self, x: Tensor) -> Tensor:
        if not (self.training and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
            return super().forward(x)
        dims = (0, 2, 3)
        n = x.numel() // x.shape[1]
        local_mean = x.mean(dims)
        local_m2 = ((x - local_mean[None, :, None, None]) ** 2).sum(dims)
        local = torch.cat([torch.tensor([float(n)], dtype=torch.float64),
                           n * local_mean.double(), local_m2.double() + n * local_mean.double() ** 2])
        total = differentiable_sum(local)
        count, channels = total[0].detach(), x.shape[1]
        mean = total[1 : 1 + channels] / count
        var = (total[1 + channels :] / count - mean * mean).clamp_min(0.0)
        self._update_running_stats(mean.detach().float(), var.detach().float(), float(count))
        scale = torch.rsqrt(var + self.eps).to(x.dtype)
        out = (x - mean.to(x.dtype)[None, :, None, None]) * scale[None, :, None, None]
        if self.affine:
            out = out * self.weight[None, :, None, None] + self.bias[None, :, None, None]
        return out

    @torch.no_grad()
    def _update_running_stats(self, mean: Tensor, var: Tensor, count: float) -> None:
        if not self.track_running_stats or self.running_mean is None or self.running_var is None:
            return
        tracked = self.num_batches_tracked
        if tracked is not None:
            tracked.add_(1)
        momentum = self.momentum if self.momentum is not None else 1.0 / float(tracked if tracked is not None else 1)
        unbiased = var * (count / max(count - 1.0, 1.0))
        self.running_mean.lerp_(mean, momentum)
        self.running_var.lerp_(unbiased, momentum)


def _to_gloo_sync(module: nn.Module) -> nn.Module:
    if type(module) is nn.BatchNorm2d:
        synced = GlooSyncBatchNorm(module.num_features, module.eps, module.momentum, module.affine,
                                   module.track_running_stats)
        synced.load_state_dict(module.state_dict())
        return synced
    for name, child in module.named_children():
        module.add_module(name, _to_gloo_sync(child))
    return module


def convert_sync_batchnorm(model: nn.Module, device: torch.device) -> nn.Module:
    """Batch statistics over the global batch: torch's SyncBatchNorm on GPUs, GlooSyncBatchNorm on CPUs."""
    if device.type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(model)
    return _to_gloo_sync(model)
