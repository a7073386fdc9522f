"""One training job: a spec and a dataset in, `<stem>.safetensors` and its log (CSV and JSON) out.

The weights carry the spec's state_dict keys, so `resnetc compile --weights` and `resnetc verify
--weights` take them as they are. The logs are rewritten after every epoch (each replace atomic), so a
long run can be watched; the weights are written with the final logs, together.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from resnetc.core.errors import UsageError
from resnetc.core.files import write_all_atomic
from resnetc.core.options import out_folder
from resnetc.frontend.load import LoadedSpec
from resnetc.train.data import Dataset, read_dataset
from resnetc.train.loop import Epoch, Processes, Recipe, Speed, distribute, fit, processes


@dataclass(frozen=True)
class TrainResult:
    weights: Path
    csv_log: Path
    json_log: Path
    history: list[Epoch]
    overrides: dict[str, object]  # what compile/verify need to rebuild the trained model (--num-classes, ...)
    where: Processes


def _fitted(loaded: LoadedSpec, data: Dataset, num_classes: int | None, in_channels: int | None) -> LoadedSpec:
    """The spec with the dataset's image size, and checked against the dataset's channels and labels."""
    from resnetc.api import override

    channels, height, width = data.image_shape
    spec_channels = in_channels or loaded.spec.input[0]
    if spec_channels != channels:
        raise UsageError(
            f"the dataset's images have {channels} channel(s), the spec's input {spec_channels}: "
            f"pass --in-channels {channels}"
        )
    classes = num_classes or loaded.spec.num_classes
    if classes is None:
        raise UsageError(f"{loaded.file_name} is a backbone (no classifier): train a spec with num_classes")
    if data.num_classes > classes:
        raise UsageError(
            f"the dataset's labels go up to {data.num_classes - 1}, more than the spec's {classes} classes: "
            f"pass --num-classes {data.num_classes}"
        )
    return override(loaded, num_classes=num_classes, in_channels=in_channels, input_size=(height, width))


def _csv(history: list[Epoch]) -> bytes:
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow([name for name in Epoch.__dataclass_fields__])
    for epoch in history:
        writer.writerow(["" if value is None else value for value in asdict(epoch).values()])
    return text.getvalue().encode()


def train(
    spec: str | Path | LoadedSpec,
    data: str | Path,
    out_dir: str | Path,
    recipe: Recipe,
    *,
    num_classes: int | None = None,
    in_channels: int | None = None,
    device: str = "auto",
    speed: Speed | None = None,
    progress: bool = True,
    on_epoch: Callable[[Epoch], None] | None = None,
) -> TrainResult:
    """Train the spec's generated module on `data` (see `resnetc.train.data`) and write the results.
    `speed` (channels-last, mixed precision, torch.compile, batch workers) changes how fast, not what."""
    from safetensors.torch import save as safetensors_bytes

    from resnetc.api import build, load

    loaded = spec if isinstance(spec, LoadedSpec) else load(spec)
    dataset = read_dataset(data)
    fitted = _fitted(loaded, dataset, num_classes, in_channels)
    where = processes(device)
    speed = speed or Speed()
    # Refused before the output folder is made (fit checks the same for its own callers): what the device
    # cannot run (--amp fp16 on the CPU), --compile without a compiler.
    speed_record = speed.record(where.device)
    speed.check_compile(where.device)
    out_dir = out_folder(out_dir)
    paths = {kind: out_dir / f"{loaded.stem}.{kind}" for kind in ("safetensors", "csv", "json")}
    # The run's progress goes to `<stem>.partial.csv` and `.json`; the three outputs are written together at
    # the end, so they always come from one run (an earlier run's trio stays untouched until then).
    partial = {kind: out_dir / f"{loaded.stem}.partial.{kind}" for kind in ("csv", "json")}
    overrides = {
        "num_classes": fitted.spec.num_classes,
        "in_channels": fitted.spec.input[0],
        "input_size": list(fitted.spec.input[1:]),
    }
    torch.manual_seed(recipe.seed)  # the generated module's He initialisation draws from torch's generator
    module = distribute(build(fitted), where, speed)

    def summary(history: list[Epoch]) -> bytes:
        record = {
            "spec": loaded.file_name,
            "spec_sha256": loaded.sha256,
            "overrides": overrides,
            "dataset": {
                "file": Path(data).name,
                "train": len(dataset.train),
                "test": len(dataset.test) if dataset.test is not None else 0,
                "image_shape": list(dataset.image_shape),
                "classes": dataset.num_classes,
                "normalisation": {"mean": dataset.mean, "std": dataset.std},
            },
            "recipe": asdict(recipe),
            "speed": speed_record,
            "processes": where.world,
            "device": where.device.type,
            "torch": torch.__version__,
            "weights": paths["safetensors"].name,
            "epochs": [asdict(epoch) for epoch in history],
        }
        return (json.dumps(record, indent=2) + "\n").encode()

    logged: list[Epoch] = []  # the epochs so far, as the main process saw them end

    def log(epoch: Epoch) -> None:
        logged.append(epoch)
        write_all_atomic({partial["csv"]: _csv(logged), partial["json"]: summary(logged)})
        if on_epoch is not None:
            on_epoch(epoch)

    history = fit(module, dataset, recipe, where, speed=speed, progress=progress, on_epoch=log)
    if where.main:
        inner = module.module if isinstance(module, torch.nn.parallel.DistributedDataParallel) else module
        state = {key: value.detach().cpu().contiguous() for key, value in inner.state_dict().items()}
        # One metadata key: safetensors writes its metadata map in no fixed order, and the file should
        # be the same bytes for the same seed.
        provenance = {
            "spec": loaded.file_name,
            "spec_sha256": loaded.sha256,
            "epochs": recipe.epochs,
            "overrides": overrides,
            "normalisation": {"mean": dataset.mean, "std": dataset.std},
            # What a served model needs to feed it as it was trained (compile --weights puts it in the ONNX
            # metadata as resnetc.preprocessing.*): the spec's preprocessing keys, and the model's input.
            "preprocessing": {"scale": dataset.scale, "mean": list(dataset.mean), "std": list(dataset.std)},
            "num_classes": fitted.spec.num_classes,
            "input": list(fitted.spec.input),
        }
        metadata = {"resnetc": json.dumps(provenance, sort_keys=True)}
        write_all_atomic(
            {
                paths["safetensors"]: safetensors_bytes(state, metadata),
                paths["csv"]: _csv(history),
                paths["json"]: summary(history),
            }
        )
        for progress_log in partial.values():
            progress_log.unlink(missing_ok=True)
    if where.world > 1:  # every process waits until the weights are written
        torch.distributed.barrier()
    return TrainResult(paths["safetensors"], paths["csv"], paths["json"], history, overrides, where)
