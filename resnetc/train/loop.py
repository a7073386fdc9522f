"""`resnetc train`: the generated module of a spec, trained with the paper's CIFAR recipe.

He et al. 2015, section 4.2: SGD with momentum 0.9 and weight decay 1e-4, batch 128, learning rate 0.1
divided by 10 at 32k and 48k of 64k iterations (half and three quarters of the run), 4-pixel padding
with a random crop and a horizontal flip, He initialisation (as the generated module does it).

Deterministic for a seed: the initialisation, the shuffling (a DistributedSampler, also with one
process) and the augmentation (drawn per image and epoch from the seed, whichever process holds the
image) do not depend on the number of processes. So `torchrun --nproc-per-node 2` with a global
batch of 128 takes the same steps as one process with a batch of 128, up to rounding.
"""

from __future__ import annotations

import contextlib
import math
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.utils.data.distributed import DistributedSampler

from resnetc.core.errors import UsageError
from resnetc.train.data import Dataset, Split

AUGMENTATIONS = ("crop", "flip")
MAX_MILESTONES = 8


class Diverged(UsageError):
    """The training produced a non-finite loss, test loss or weight: no weights are written."""


@dataclass(frozen=True)
class Recipe:
    epochs: int
    batch_size: int = 128  # the global batch, over every process
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 1e-4
    milestones: tuple[float, ...] = (0.5, 0.75)  # fractions of the epochs after which the lr is divided by 10
    warmup_epochs: int = 0  # epochs at lr / 10 first (the paper's ResNet-110 "warm up")
    augment: tuple[str, ...] = AUGMENTATIONS
    crop_padding: int = 4
    seed: int = 0

    def __post_init__(self) -> None:
        checks = {  # flag: (value, whether it is usable)
            "--epochs": (self.epochs, self.epochs >= 1),
            "--batch-size": (self.batch_size, self.batch_size >= 1),
            "--lr": (self.lr, math.isfinite(self.lr) and self.lr > 0),
            "--momentum": (self.momentum, 0 <= self.momentum < 1),
            "--weight-decay": (self.weight_decay, math.isfinite(self.weight_decay) and self.weight_decay >= 0),
            "--milestones": (list(self.milestones), all(0 < value < 1 for value in self.milestones)),
            "--warmup-epochs": (self.warmup_epochs, 0 <= self.warmup_epochs < self.epochs),
            "--crop-padding": (self.crop_padding, 0 <= self.crop_padding <= 64),
            "--augment": (list(self.augment), all(name in AUGMENTATIONS for name in self.augment)),
            "--seed": (self.seed, 0 <= self.seed < 2**63),  # numpy's seeds are non-negative, torch's 64-bit
        }
        if len(self.milestones) > MAX_MILESTONES:  # each divides the lr by 10: past a few it is zero in float32
            bad_count = f"--milestones ({len(self.milestones)} values; at most {MAX_MILESTONES})"
            raise UsageError(f"out of range: {bad_count}")
        bad = [f"{flag} {value!r}" for flag, (value, usable) in checks.items() if not usable]
        if bad:
            raise UsageError(
                f"out of range: {', '.join(bad)} (epochs >= 1, batch >= 1, lr > 0, weight decay >= 0, "
                "0 <= momentum < 1, milestones between 0 and 1, fewer warm-up epochs than epochs, "
                f"crop padding 0..64, augment from {', '.join(AUGMENTATIONS)})"
            )

    def lr_at(self, epoch: int) -> float:
        """The learning rate of epoch `epoch` (0-based): a tenth during warm-up, then step decays."""
        if epoch < self.warmup_epochs:
            return self.lr / 10
        # Never before the first epoch: a one-epoch run trains at the given lr.
        decays = sum(epoch >= max(1, round(fraction * self.epochs)) for fraction in self.milestones)
        return self.lr / 10**decays


@dataclass(frozen=True)
class Epoch:
    epoch: int  # 1-based
    lr: float
    train_loss: float
    train_error: float  # over the epoch's augmented batches, in train mode, as the paper's curves
    test_loss: float | None
    test_error: float | None
    seconds: float


@dataclass
class Processes:
    """This process's place in a torchrun launch (one process when not launched by torchrun)."""

    world: int = 1
    rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def main(self) -> bool:
        return self.rank == 0


def processes(device: str) -> Processes:
    """Read torchrun's environment and start the process group: NCCL on GPUs, gloo on CPU."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank, local_rank = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device cuda: PyTorch sees no CUDA device here")
    chosen = torch.device(f"cuda:{local_rank}") if device == "cuda" else torch.device("cpu")
    if chosen.type == "cuda":
        torch.cuda.set_device(chosen)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if chosen.type == "cuda" else "gloo")
    return Processes(world, rank, chosen)


def distribute(module: nn.Module, where: Processes) -> nn.Module:
    """The module as DistributedDataParallel with synchronised BatchNorm, or as it is for one process."""
    module = module.to(where.device)
    if where.world == 1:
        return module
    if where.device.type == "cuda":
        module = nn.SyncBatchNorm.convert_sync_batchnorm(module)
        return nn.parallel.DistributedDataParallel(module, device_ids=[where.device.index])
    from resnetc.train.sync_batchnorm import convert

    # Its own group, so that the statistics' all-reduces never queue behind DDP's gradient buckets.
    module = convert(module, dist.new_group(backend="gloo"))
    return nn.parallel.DistributedDataParallel(module)


def _augment(images: torch.Tensor, shifts: np.ndarray, flips: np.ndarray, padding: int) -> torch.Tensor:
    """Each image shifted within a zero border of `padding` pixels (a random crop) and mirrored where flipped."""
    if padding:
        height, width = images.shape[2:]
        padded = F.pad(images, (padding, padding, padding, padding))
        images = torch.stack(
            [padded[i, :, dy : dy + height, dx : dx + width] for i, (dy, dx) in enumerate(shifts.tolist())]
        )
    if flips.any():
        images = images.clone()
        chosen = torch.from_numpy(flips)
        images[chosen] = images[chosen].flip(-1)
    return images


def _batches(split: Split, recipe: Recipe, epoch: int, where: Processes) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """This process's share of each global batch of the epoch, augmented."""
    sampler = DistributedSampler(
        range(len(split)), num_replicas=where.world, rank=where.rank, shuffle=True, seed=recipe.seed
    )
    sampler.set_epoch(epoch)
    indices = np.fromiter(sampler, dtype=np.int64)
    # The draws are made for the whole dataset and indexed by image: the same image gets the same crop
    # and flip in an epoch whichever process holds it.
    draws = np.random.default_rng([recipe.seed, epoch])
    padding = recipe.crop_padding if "crop" in recipe.augment else 0
    shifts = draws.integers(0, 2 * padding + 1, size=(len(split), 2))
    flips = draws.random(len(split)) < 0.5 if "flip" in recipe.augment else np.zeros(len(split), dtype=bool)
    local = recipe.batch_size // where.world
    for start in range(0, len(indices), local):
        chosen = indices[start : start + local]
        if len(chosen) < 2 and start:  # BatchNorm cannot train on one sample: a last batch of one is dropped
            break
        images = torch.from_numpy(split.images[chosen])
        yield (
            _augment(images, shifts[chosen], flips[chosen], padding).to(where.device),
            torch.from_numpy(split.labels[chosen]).to(where.device),
        )


def _all_sum(values: list[float], where: Processes) -> list[float]:
    if where.world == 1:
        return values
    tensor = torch.tensor(values, dtype=torch.float64, device=where.device)
    dist.all_reduce(tensor)
    return tensor.tolist()


@torch.no_grad()
def evaluate(
    module: nn.Module, split: Split, where: Processes | None = None, batch_size: int = 256
) -> tuple[float, float]:
    """Mean cross-entropy and top-1 error in eval mode; each process takes every world-th image."""
    where = where or Processes()
    module.eval()
    loss_sum = errors = 0.0
    mine = np.arange(where.rank, len(split), where.world)
    for start in range(0, len(mine), batch_size):
        chosen = mine[start : start + batch_size]
        logits = module(torch.from_numpy(split.images[chosen]).to(where.device))
        labels = torch.from_numpy(split.labels[chosen]).to(where.device)
        loss_sum += float(F.cross_entropy(logits, labels, reduction="sum"))
        errors += float((logits.argmax(1) != labels).sum())
    loss_sum, errors = _all_sum([loss_sum, errors], where)
    return loss_sum / len(split), errors / len(split)


def _progress(total: int, description: str, enabled: bool) -> contextlib.AbstractContextManager:
    from tqdm import tqdm

    return tqdm(total=total, desc=description, unit="batch", leave=False, disable=not enabled, dynamic_ncols=True)


def _diverged(what: str, epoch: int, step: int, recipe: Recipe) -> Diverged:
    return Diverged(
        f"the training diverged at epoch {epoch + 1}, step {step}: {what}; no weights were written "
        f"(try a lower --lr than {recipe.lr_at(epoch):g}, or --warmup-epochs 1)"
    )


def fit(
    module: nn.Module,
    data: Dataset,
    recipe: Recipe,
    where: Processes,
    *,
    progress: bool = True,
    on_epoch: Callable[[Epoch], None] | None = None,
) -> list[Epoch]:
    """Train `module` (already on its device, wrapped for DDP where distributed) and log each epoch."""
    if recipe.batch_size % where.world:
        raise UsageError(f"--batch-size {recipe.batch_size} must divide among {where.world} processes")
    # The paper's weight decay applies to every parameter (BatchNorm's included), as torchvision's recipe.
    optimiser = torch.optim.SGD(
        module.parameters(), lr=recipe.lr, momentum=recipe.momentum, weight_decay=recipe.weight_decay
    )
    steps = math.ceil(len(data.train) / recipe.batch_size)
    if len(data.train) < 2 * where.world:
        raise UsageError(f"training needs at least 2 images per process for BatchNorm, got {len(data.train)}")
    history: list[Epoch] = []
    for epoch in range(recipe.epochs):
        started = time.perf_counter()
        for group in optimiser.param_groups:
            group["lr"] = recipe.lr_at(epoch)
        module.train()
        loss_sum = errors = seen = 0.0
        with _progress(steps, f"epoch {epoch + 1}/{recipe.epochs}", progress and where.main) as bar:
            for step, (images, labels) in enumerate(_batches(data.train, recipe, epoch, where), 1):
                logits = module(images)
                loss = F.cross_entropy(logits, labels)
                if not torch.isfinite(loss):
                    raise _diverged(f"the loss became {float(loss.detach())}", epoch, step, recipe)
                optimiser.zero_grad(set_to_none=True)
                loss.backward()
                optimiser.step()
                loss_sum += float(loss.detach()) * len(labels)
                errors += float((logits.detach().argmax(1) != labels).sum())
                seen += len(labels)
                bar.update()
                bar.set_postfix(loss=f"{loss_sum / seen:.3f}", error=f"{errors / seen:.3f}")
        loss_sum, errors, seen = _all_sum([loss_sum, errors, seen], where)
        if not all(bool(torch.isfinite(tensor).all()) for tensor in module.state_dict().values()):
            raise _diverged("a weight or running statistic became infinite or NaN", epoch, steps, recipe)
        test = evaluate(module, data.test, where) if data.test is not None else (None, None)
        if test[0] is not None and not math.isfinite(test[0]):
            raise _diverged(f"the test loss became {test[0]}", epoch, steps, recipe)
        record = Epoch(
            epoch + 1, recipe.lr_at(epoch), loss_sum / seen, errors / seen, *test, time.perf_counter() - started
        )
        history.append(record)
        if on_epoch is not None and where.main:
            on_epoch(record)
    return history
