"""`resnetc train`: the generated module of a spec, trained with the paper's CIFAR recipe.

He et al. 2015, section 4.2: SGD with momentum 0.9 and weight decay 1e-4, batch 128, learning rate 0.1
divided by 10 at 32k and 48k of 64k iterations (half and three quarters of the run), 4-pixel padding
with a random crop and a horizontal flip, He initialisation (as the generated module does it).

Deterministic for a seed: the initialisation, the shuffling (a DistributedSampler, also with one
process) and the augmentation (drawn per image and epoch from the seed, whichever process holds the
image) do not depend on the number of processes. So `torchrun --nproc-per-node 2` with a global
batch of 128 takes the same steps as one process with a batch of 128, up to rounding.

How fast it runs is a separate choice (`Speed`): channels-last tensors, automatic mixed precision,
torch.compile and worker processes for the batches. None of them changes which images a step sees; only
`amp` changes the arithmetic (bf16 or fp16 rounding). The loop itself does no per-step host work beyond
what a hand-written loop does: the loss and error are summed on the device and read once per epoch (and,
with a progress bar, at its refresh rate), and the loss is checked for divergence every few steps.
"""

from __future__ import annotations

import contextlib
import importlib.util
import math
import os
import shutil
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
AMP = ("auto", "bf16", "fp16")  # auto: bf16 on the CPU, fp16 on CUDA
MAX_WORKERS = 64
CHECK_EVERY = 16  # steps between divergence checks (each one waits for the device)


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


@dataclass(frozen=True)
class Speed:
    """How the recipe runs, not what it computes: the same images reach the same steps with every setting.
    Only `amp` changes the arithmetic (convolutions in bf16 or fp16, with fp32 weights and a loss scaler
    for fp16)."""

    channels_last: bool = False  # the model's weights and the batches in NHWC
    amp: str | None = None  # None: float32; "auto": bf16 on the CPU, fp16 on CUDA; or "bf16" / "fp16"
    compile: bool = False  # torch.compile (inductor) of the module, for training and evaluation
    workers: int = 0  # processes that make the batches (0: this one)

    def __post_init__(self) -> None:
        bad = []
        if self.amp is not None and self.amp not in AMP:
            bad.append(f"--amp {self.amp!r} (one of {', '.join(AMP)})")
        if not 0 <= self.workers <= MAX_WORKERS:
            bad.append(f"--workers {self.workers} (0 to {MAX_WORKERS}; 0 makes the batches in this process)")
        if bad:
            raise UsageError(f"out of range: {', '.join(bad)}")

    def amp_name(self, device: torch.device) -> str | None:
        """The precision `amp` means on `device`: None (float32), "bf16" or "fp16"; a refusal where it cannot run."""
        if self.amp is None:
            return None
        name = self.amp if self.amp != "auto" else ("fp16" if device.type == "cuda" else "bf16")
        if name == "fp16" and device.type != "cuda":
            raise UsageError("--amp fp16 runs on CUDA only: on the CPU use --amp bf16 (or --amp alone, which picks it)")
        if name == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
            raise UsageError("--amp bf16: this GPU has no bfloat16 arithmetic; use --amp fp16 (or --amp alone)")
        return name

    def amp_dtype(self, device: torch.device) -> torch.dtype | None:
        name = self.amp_name(device)
        return None if name is None else {"bf16": torch.bfloat16, "fp16": torch.float16}[name]

    def check_compile(self, device: torch.device) -> None:
        """torch.compile's inductor builds C++ on the CPU and Triton kernels on CUDA: refuse before it fails."""
        if not self.compile:
            return
        if device.type == "cuda" and importlib.util.find_spec("triton") is None:
            raise UsageError("--compile on CUDA needs Triton (pip install triton)")
        if device.type == "cpu" and not any(shutil.which(name) for name in (os.environ.get("CXX") or "g++", "clang++")):
            raise UsageError("--compile on the CPU needs a C++ compiler (g++ or clang++, or CXX set to one)")

    def record(self, device: torch.device) -> dict[str, object]:
        """What the run's .json says: `amp` as it was resolved for the device."""
        return {
            "channels_last": self.channels_last,
            "amp": self.amp_name(device),
            "compile": self.compile,
            "workers": self.workers,
        }


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


def distribute(module: nn.Module, where: Processes, speed: Speed | None = None) -> nn.Module:
    """The module on its device (channels-last if asked), as DistributedDataParallel with synchronised
    BatchNorm, or as it is for one process."""
    module = module.to(where.device)
    if speed is not None and speed.channels_last:  # before DDP, which keeps views of the parameters
        module = module.to(memory_format=torch.channels_last)
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
    """Each image shifted within a zero border of `padding` pixels (a random crop) and mirrored where flipped,
    as one gather over the padded batch (0.8 ms for 128 CIFAR images here, where a loop over the images
    took 1.3 ms)."""
    if not padding and not flips.any():
        return images
    count, channels, height, width = images.shape
    padded = F.pad(images, (padding, padding, padding, padding)) if padding else images
    offsets = torch.from_numpy(shifts.astype(np.int64, copy=False))
    rows = offsets[:, :1] + torch.arange(height)  # (N, H): the rows of the padded image each output row reads
    columns = torch.arange(width).expand(count, width)
    columns = torch.where(torch.from_numpy(flips)[:, None], width - 1 - columns, columns) + offsets[:, 1:]
    index = rows[:, :, None] * (width + 2 * padding) + columns[:, None, :]  # (N, H, W) into the padded plane
    flat = index.reshape(count, 1, height * width).expand(count, channels, height * width)
    return padded.reshape(count, channels, -1).gather(2, flat).reshape(count, channels, height, width)


class Batches(torch.utils.data.Dataset):
    """This process's batches of a split, each named by (epoch, step) and computed from the seed alone: the
    shuffle (a DistributedSampler) and the crops and flips (drawn for the whole split and indexed by image, so
    the same image gets the same crop in an epoch whichever process holds it). A worker process therefore
    makes the very batch the main process would have made."""

    def __init__(self, split: Split, recipe: Recipe, where: Processes, channels_last: bool = False) -> None:
        self.split, self.recipe, self.world, self.rank = split, recipe, where.world, where.rank
        self.channels_last = channels_last
        self.local = recipe.batch_size // where.world
        self.padding = recipe.crop_padding if "crop" in recipe.augment else 0
        self._plan: tuple[int, np.ndarray, np.ndarray, np.ndarray] | None = None
        mine = math.ceil(len(split) / where.world)  # the sampler pads every process's share to this length
        starts = range(0, mine, self.local)
        # BatchNorm cannot train on one sample: a last batch of one is dropped.
        self.steps = sum(1 for start in starts if not (start and mine - start < 2))

    def __len__(self) -> int:
        return self.steps

    def plan(self, epoch: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The epoch's order of this process's images, and every image's shift and flip."""
        if self._plan is None or self._plan[0] != epoch:
            sampler = DistributedSampler(
                range(len(self.split)), num_replicas=self.world, rank=self.rank, shuffle=True, seed=self.recipe.seed
            )
            sampler.set_epoch(epoch)
            indices = np.fromiter(sampler, dtype=np.int64)
            draws = np.random.default_rng([self.recipe.seed, epoch])
            size = len(self.split)
            shifts = draws.integers(0, 2 * self.padding + 1, size=(size, 2))
            flips = draws.random(size) < 0.5 if "flip" in self.recipe.augment else np.zeros(size, dtype=bool)
            self._plan = (epoch, indices, shifts, flips)
        return self._plan[1:]

    def __getitem__(self, key: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        epoch, step = key
        indices, shifts, flips = self.plan(epoch)
        chosen = indices[step * self.local : (step + 1) * self.local]
        images = _augment(torch.from_numpy(self.split.images[chosen]), shifts[chosen], flips[chosen], self.padding)
        if self.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        return images, torch.from_numpy(self.split.labels[chosen])


class _Keys(torch.utils.data.Sampler):
    """(epoch, step) for every step of the current epoch: the sampler of a DataLoader over `Batches`."""

    def __init__(self, steps: int) -> None:
        self.steps, self.epoch = steps, 0

    def __len__(self) -> int:
        return self.steps

    def __iter__(self) -> Iterator[tuple[int, int]]:
        return ((self.epoch, step) for step in range(self.steps))


class _Pipeline:
    """The epochs' batches: made in this process (`workers=0`), or by worker processes that stay up from
    epoch to epoch (a DataLoader over `Batches`, batches pinned for a GPU)."""

    def __init__(self, batches: Batches, workers: int, device: torch.device) -> None:
        self.batches, self.keys = batches, _Keys(len(batches))
        self.loader = None
        if workers:
            self.loader = torch.utils.data.DataLoader(
                batches,
                batch_size=None,
                sampler=self.keys,
                num_workers=workers,
                pin_memory=device.type == "cuda",
                persistent_workers=True,
            )

    def epoch(self, epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        self.keys.epoch = epoch
        if self.loader is None:
            return (self.batches[key] for key in self.keys)
        return iter(self.loader)


def _all_sum(values: list[float], where: Processes) -> list[float]:
    if where.world == 1:
        return values
    tensor = torch.tensor(values, dtype=torch.float64, device=where.device)
    dist.all_reduce(tensor)
    return tensor.tolist()


def _autocast(device: torch.device, dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
    return torch.autocast(device.type, dtype) if dtype is not None else contextlib.nullcontext()


@torch.no_grad()
def evaluate(
    module: nn.Module,
    split: Split,
    where: Processes | None = None,
    batch_size: int = 256,
    speed: Speed | None = None,
) -> tuple[float, float]:
    """Mean cross-entropy and top-1 error in eval mode; each process takes every world-th image."""
    where, speed = where or Processes(), speed or Speed()
    dtype = speed.amp_dtype(where.device)
    module.eval()
    loss_sum = torch.zeros((), dtype=torch.float64, device=where.device)
    errors = torch.zeros((), dtype=torch.int64, device=where.device)
    mine = np.arange(where.rank, len(split), where.world)
    for start in range(0, len(mine), batch_size):
        chosen = mine[start : start + batch_size]
        images = torch.from_numpy(split.images[chosen]).to(where.device)
        if speed.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        labels = torch.from_numpy(split.labels[chosen]).to(where.device)
        with _autocast(where.device, dtype):
            logits = module(images)
        loss_sum += F.cross_entropy(logits.float(), labels, reduction="sum")
        errors += (logits.argmax(1) != labels).sum()
    total, wrong = _all_sum([float(loss_sum), float(errors)], where)
    return total / len(split), wrong / len(split)


def _progress(total: int, description: str, enabled: bool) -> contextlib.AbstractContextManager:
    from tqdm import tqdm

    return tqdm(total=total, desc=description, unit="batch", leave=False, disable=not enabled, dynamic_ncols=True)


def _diverged(what: str, epoch: int, step: int, recipe: Recipe) -> Diverged:
    return Diverged(
        f"the training diverged at epoch {epoch + 1}, step {step}: {what}; no weights were written "
        f"(try a lower --lr than {recipe.lr_at(epoch):g}, or --warmup-epochs 1)"
    )


def _check_losses(losses: list[torch.Tensor], first_step: int, epoch: int, recipe: Recipe) -> None:
    """Refuse the first non-finite loss among the steps since the last check (one wait for the device)."""
    if not losses:
        return
    stacked = torch.stack(losses)
    finite = torch.isfinite(stacked)
    if not bool(finite.all()):
        bad = int((~finite).nonzero()[0])
        raise _diverged(f"the loss became {float(stacked[bad])}", epoch, first_step + bad, recipe)
    losses.clear()


def fit(
    module: nn.Module,
    data: Dataset,
    recipe: Recipe,
    where: Processes,
    *,
    speed: Speed | None = None,
    progress: bool = True,
    on_epoch: Callable[[Epoch], None] | None = None,
) -> list[Epoch]:
    """Train `module` (already on its device, channels-last if `speed` says so, wrapped for DDP where
    distributed: `distribute` does all three) and log each epoch. `speed.compile` compiles it here."""
    speed = speed or Speed()
    if recipe.batch_size % where.world:
        raise UsageError(f"--batch-size {recipe.batch_size} must divide among {where.world} processes")
    if len(data.train) < 2 * where.world:
        raise UsageError(f"training needs at least 2 images per process for BatchNorm, got {len(data.train)}")
    dtype = speed.amp_dtype(where.device)
    speed.check_compile(where.device)
    # The paper's weight decay applies to every parameter (BatchNorm's included), as torchvision's recipe.
    optimiser = torch.optim.SGD(
        module.parameters(), lr=recipe.lr, momentum=recipe.momentum, weight_decay=recipe.weight_decay
    )
    scaler = torch.amp.GradScaler(where.device.type) if dtype == torch.float16 else None
    runner = torch.compile(module) if speed.compile else module
    pipeline = _Pipeline(Batches(data.train, recipe, where, speed.channels_last), speed.workers, where.device)
    steps = len(pipeline.batches)
    history: list[Epoch] = []
    for epoch in range(recipe.epochs):
        started = time.perf_counter()
        for group in optimiser.param_groups:
            group["lr"] = recipe.lr_at(epoch)
        module.train()
        loss_sum = torch.zeros((), dtype=torch.float64, device=where.device)
        errors = torch.zeros((), dtype=torch.int64, device=where.device)
        seen, losses, checked, shown = 0, [], 1, started
        with _progress(steps, f"epoch {epoch + 1}/{recipe.epochs}", progress and where.main) as bar:
            for step, (images, labels) in enumerate(pipeline.epoch(epoch), 1):
                images = images.to(where.device, non_blocking=True)
                labels = labels.to(where.device, non_blocking=True)
                with _autocast(where.device, dtype):
                    logits = runner(images)
                    loss = F.cross_entropy(logits, labels)
                optimiser.zero_grad(set_to_none=True)
                if scaler is not None:
                    scaler.scale(loss).backward()
                    scaler.step(optimiser)
                    scaler.update()
                else:
                    loss.backward()
                    optimiser.step()
                # Summed on the device: no step waits for the host to read a number.
                losses.append(loss.detach())
                loss_sum += losses[-1] * len(labels)
                errors += (logits.detach().argmax(1) != labels).sum()
                seen += len(labels)
                if len(losses) == CHECK_EVERY:
                    _check_losses(losses, checked, epoch, recipe)
                    checked = step + 1
                if not bar.disable:
                    bar.update()
                    if time.perf_counter() - shown > 0.5:  # tqdm's own refresh rate; each read waits for the device
                        shown = time.perf_counter()
                        bar.set_postfix(loss=f"{float(loss_sum) / seen:.3f}", error=f"{int(errors) / seen:.3f}")
        _check_losses(losses, checked, epoch, recipe)
        total_loss, total_errors, seen = _all_sum([float(loss_sum), float(errors), seen], where)
        if not bool(torch.stack([torch.isfinite(tensor).all() for tensor in module.state_dict().values()]).all()):
            raise _diverged("a weight or running statistic became infinite or NaN", epoch, steps, recipe)
        test = evaluate(runner, data.test, where, speed=speed) if data.test is not None else (None, None)
        if test[0] is not None and not math.isfinite(test[0]):
            raise _diverged(f"the test loss became {test[0]}", epoch, steps, recipe)
        record = Epoch(
            epoch + 1,
            recipe.lr_at(epoch),
            total_loss / seen,
            total_errors / seen,
            *test,
            time.perf_counter() - started,
        )
        history.append(record)
        if on_epoch is not None and where.main:
            on_epoch(record)
    return history
