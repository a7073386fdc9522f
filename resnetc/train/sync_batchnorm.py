"""Batch statistics over every process of a CPU (gloo) run.

`torch.nn.SyncBatchNorm` refuses CPU tensors ("expected input tensor to be on GPU"), so on CPU each
BatchNorm2d is swapped for this one: the per-channel sums are all-reduced with a differentiable
all-reduce, so the forward normalises with the global batch's mean and variance and the backward sums
the statistics' gradients over the processes, as one process on the whole batch would. The swapped
module keeps BatchNorm2d's parameters and buffers, so the state_dict keys stay those of the spec.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.distributed.nn.functional as distributed_functional
from torch import nn


class GlooSyncBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm2d whose training statistics are those of the batch across every process of `group`."""

    group: dist.ProcessGroup | None = None

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return super().forward(input)
        channels = input.shape[1]
        # Sums in float64: E[x^2] - E[x]^2 in float32 loses digits when the mean is large.
        wide = input.double()
        count = torch.tensor([input.numel() / channels], dtype=torch.float64)
        local = torch.cat([wide.sum(dim=(0, 2, 3)), (wide * wide).sum(dim=(0, 2, 3)), count])
        total = distributed_functional.all_reduce(local, group=self.group)
        n = total[-1]
        mean = total[:channels] / n
        variance = (total[channels : 2 * channels] / n - mean * mean).clamp_min(0)
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                momentum = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
                unbiased = variance * n / (n - 1).clamp_min(1)
                self.running_mean.mul_(1 - momentum).add_(mean.to(self.running_mean.dtype), alpha=momentum)
                self.running_var.mul_(1 - momentum).add_(unbiased.to(self.running_var.dtype), alpha=momentum)
        scale = torch.rsqrt(variance + self.eps).to(input.dtype)
        shift = mean.to(input.dtype)
        out = (input - shift[None, :, None, None]) * scale[None, :, None, None]
        if self.affine:
            out = out * self.weight[None, :, None, None] + self.bias[None, :, None, None]
        return out


def convert(module: nn.Module, group: dist.ProcessGroup | None = None) -> nn.Module:
    """`module` with every BatchNorm2d replaced in place by GlooSyncBatchNorm2d, holding the same tensors."""
    for name, child in module.named_children():
        if type(child) is nn.BatchNorm2d:
            synced = GlooSyncBatchNorm2d(
                child.num_features, child.eps, child.momentum, child.affine, child.track_running_stats
            )
            synced.load_state_dict(child.state_dict())
            synced.group = group
            setattr(module, name, synced)
        else:
            convert(child, group)
    return module
