"""The baseline of `resnetc train`: the plain training loop a practitioner writes by hand over the same
tensors and the same generated module. Timed as its own process by bench.py, beside `resnetc train`.

    python benchmarks/train_baseline.py DATA.npz resnet20 --epochs 3 --batch-size 128 --augment crop,flip

Prints one JSON object, {"seconds": [one wall time per epoch]}. What it does is what `resnetc train`'s recipe
does, written the short way: the images scaled and normalised per channel once, the model class imported
from `generated/<stem>.py` (seeded as `resnetc train` seeds it), SGD with momentum 0.9 and weight decay
1e-4 at lr 0.1, a shuffled pass per epoch in batches, and for augmentation a random crop of the zero-padded
batch and a horizontal flip, drawn per image and done in one indexing operation. Nothing is logged per step:
the loss is summed on the device, read once per epoch. It is the floor, not a straw man.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _augment(images: torch.Tensor, padding: int, flip: bool, generator: torch.Generator) -> torch.Tensor:
    """Random crops of the zero-padded batch (and horizontal flips), one gather for the whole batch."""
    batch, _, height, width = images.shape
    padded = F.pad(images, (padding, padding, padding, padding))
    dy, dx = (torch.randint(0, 2 * padding + 1, (batch, 1), generator=generator) for _ in range(2))
    rows = dy + torch.arange(height)
    columns = torch.arange(width).expand(batch, width)
    if flip:
        mirrored = torch.rand(batch, generator=generator) < 0.5
        columns = torch.where(mirrored[:, None], width - 1 - columns, columns)
    columns = columns + dx
    index = torch.arange(batch)[:, None, None, None]
    channel = torch.arange(images.shape[1])[None, :, None, None]
    return padded[index, channel, rows[:, None, :, None], columns[:, None, None, :]]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("data")
    parser.add_argument("stem", help="a module of generated/, e.g. resnet20")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--augment", default="crop,flip", help="crop,flip | crop | none")
    parser.add_argument("--padding", type=int, default=4)
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument("--amp", choices=("bf16", "fp16"))
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    arrays = np.load(args.data)
    images = arrays["x_train"].astype(np.float32)
    if arrays["x_train"].dtype == np.uint8:
        images /= 255
    mean, std = images.mean(axis=(0, 2, 3), keepdims=True), images.std(axis=(0, 2, 3), keepdims=True)
    x_all = torch.from_numpy((images - mean) / np.maximum(std, 1e-12))
    y_all = torch.from_numpy(arrays["y_train"].astype(np.int64))
    classes = int(y_all.max()) + 1

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    module = importlib.import_module(f"generated.{args.stem}")
    torch.manual_seed(args.seed)
    model = getattr(module, module.__all__[0])(num_classes=max(classes, 10), in_channels=x_all.shape[1]).to(device)
    if args.channels_last:
        model = model.to(memory_format=torch.channels_last)
    step_model = torch.compile(model) if args.compile else model
    optimiser = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(args.amp or "")
    scaler = torch.amp.GradScaler(device.type) if args.amp == "fp16" else None
    generator = torch.Generator().manual_seed(args.seed)
    augment = args.augment.split(",") if args.augment != "none" else []
    padding = args.padding if "crop" in augment else 0

    seconds = []
    for _ in range(args.epochs):
        start = time.perf_counter()
        model.train()
        total = torch.zeros((), device=device)
        order = torch.randperm(len(x_all), generator=generator)
        for first in range(0, len(order), args.batch_size):
            chosen = order[first : first + args.batch_size]
            x, y = x_all[chosen], y_all[chosen]
            if augment:
                x = _augment(x, padding, "flip" in augment, generator)
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            if args.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            autocast = torch.autocast(device.type, dtype) if dtype is not None else contextlib.nullcontext()
            with autocast:
                loss = F.cross_entropy(step_model(x), y)
            optimiser.zero_grad(set_to_none=True)
            if scaler is not None:
                scaler.scale(loss).backward()
                scaler.step(optimiser)
                scaler.update()
            else:
                loss.backward()
                optimiser.step()
            total += loss.detach()
        float(total)  # the epoch's loss, read once: on a GPU this waits for the last step
        seconds.append(time.perf_counter() - start)
    print(json.dumps({"seconds": seconds}))


if __name__ == "__main__":
    main()
