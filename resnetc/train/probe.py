"""`resnetc probe`: how the signal behaves with depth, at initialisation or in a trained model.

One seeded batch (standard normal images, uniform random labels) goes forward and backward through the
generated module. For every weighted layer (each convolution and linear layer, in the order the forward pass
reaches them) it records the variance of the layer's output and the norm of its weight's gradient, and for
each 3x3 convolution followed by a BatchNorm the standard deviation of that BatchNorm's output: the layer's
response after BN and before the nonlinearity, as He et al. 2015 plot it in Fig. 7. Freshly initialised, the
model runs in train mode (BatchNorm with the batch's statistics, as on the first step); with `weights` (a
trained model) in eval mode, with its running statistics, as the paper measures trained nets.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from resnetc.core.errors import UsageError
from resnetc.frontend.load import LoadedSpec


@dataclass(frozen=True)
class LayerProbe:
    depth: int  # 1-based position among the weighted layers, in forward order
    name: str  # the module's state_dict prefix (`layer2.0.conv1`)
    output_variance: float
    grad_norm: float  # Frobenius norm of d loss / d weight
    response_std: float | None = None  # a 3x3 convolution's output after its BatchNorm (Fig. 7); else None


@dataclass(frozen=True)
class Probe:
    spec: str  # the spec's file name
    class_name: str
    batch: int
    loss: float
    layers: list[LayerProbe]

    def as_json(self) -> dict[str, object]:
        return asdict(self)

    @property
    def first(self) -> LayerProbe:
        return self.layers[0]

    @property
    def last_conv(self) -> LayerProbe:
        """The deepest layer before the classifier (the classifier's gradient is set by the loss alone)."""
        return self.layers[-2] if len(self.layers) > 1 else self.layers[-1]


def probe(
    spec: str | Path | LoadedSpec,
    *,
    batch: int = 64,
    seed: int = 0,
    device: str = "cpu",
    weights: str | Path | None = None,
    data: str | Path | None = None,
    **overrides: object,
) -> Probe:
    """Forward and backward one seeded batch through the freshly initialised model, or (`weights`) through a
    trained one in eval mode. With `data` (a training .npz) the batch is its first `batch` test images (training
    images where it has no test split), normalised as `resnetc train` normalised them: the paper measures Fig. 7
    on real images, not noise."""
    from resnetc.api import build, lower

    if not 2 <= batch <= 4096:  # BatchNorm in train mode needs two samples
        raise UsageError(f"--batch must be between 2 and 4096, got {batch}")
    model = lower(spec, **overrides)
    if model.num_classes is None:
        raise UsageError(f"{model.file_name} is a backbone (no classifier): probe a spec with num_classes")
    from resnetc.weights.arrays import refuse_activations, refuse_unallocatable

    refuse_unallocatable(model.graph, 2, "probe")  # the weights and their gradients
    refuse_activations(model.graph, batch, True, "probe")
    torch.manual_seed(seed)
    module = build(model, weights).to(device)
    module.train(weights is None)
    if data is None:
        generator = torch.Generator().manual_seed(seed)
        images = torch.randn((batch, *model.input_shape), generator=generator).to(device)
        labels = torch.randint(0, model.num_classes, (batch,), generator=generator).to(device)
    else:
        images, labels = _real_batch(data, batch, model.input_shape, model.num_classes)
        images, labels = images.to(device), labels.to(device)

    weighted = {
        module_: name for name, module_ in module.named_modules() if isinstance(module_, (nn.Conv2d, nn.Linear))
    }
    variances: dict[str, float] = {}  # filled in forward order

    produced: dict[int, str] = {}  # id of a 3x3 convolution's output -> its name, for the BatchNorm after it
    responses: dict[str, float] = {}

    def record(layer: nn.Module, _inputs: object, output: torch.Tensor) -> None:  # None: the output stays as it is
        variances.setdefault(weighted[layer], float(output.detach().var()))
        if isinstance(layer, nn.Conv2d) and layer.kernel_size == (3, 3):
            produced[id(output)] = weighted[layer]

    def respond(_norm: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
        name = produced.get(id(inputs[0]))
        if name is not None:
            responses.setdefault(name, float(output.detach().std()))

    norms = [layer for layer in module.modules() if isinstance(layer, nn.BatchNorm2d)]
    handles = [layer.register_forward_hook(record) for layer in weighted]
    handles += [norm.register_forward_hook(respond) for norm in norms]
    try:
        loss = F.cross_entropy(module(images), labels)
        loss.backward()
    finally:
        for handle in handles:
            handle.remove()
    by_name = {name: layer for layer, name in weighted.items()}
    layers = [
        LayerProbe(depth, name, variance, float(by_name[name].weight.grad.norm()), responses.get(name))
        for depth, (name, variance) in enumerate(variances.items(), start=1)
    ]
    return Probe(model.file_name, model.class_name, batch, float(loss.detach()), layers)


def _real_batch(
    data: str | Path, batch: int, shape: tuple[int, ...], classes: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """The first `batch` test images of a training dataset (else training images) and their labels."""
    from resnetc.train.data import read_dataset

    dataset = read_dataset(data)
    split = dataset.test if dataset.test is not None else dataset.train
    if tuple(split.images.shape[1:]) != tuple(shape):
        found = "x".join(map(str, split.images.shape[1:]))
        raise UsageError(f"{data}: images are {found}, the model takes {'x'.join(map(str, shape))}")
    if dataset.num_classes > classes:
        raise UsageError(f"{data}: labels reach {dataset.num_classes - 1}, the model has {classes} classes")
    if len(split) < batch:
        raise UsageError(f"{data}: {len(split)} images, fewer than --batch {batch}")
    return torch.from_numpy(split.images[:batch].copy()), torch.from_numpy(split.labels[:batch].astype("int64"))


def markdown_table(probes: list[Probe]) -> str:
    """One row per model: the gradient at the first layer and at the last before the head, their ratio, and
    the largest output variance (in a residual net, that of the convolution reading the residual stream)."""
    rows = [
        "| spec | weighted layers | loss at init | ‖∇W‖ first conv | ‖∇W‖ last conv | first / last "
        "| largest Var(out) |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for result in probes:
        first, last = result.first, result.last_conv
        largest = max(layer.output_variance for layer in result.layers)
        rows.append(
            f"| {Path(result.spec).stem} | {len(result.layers)} | {result.loss:.3f} | {first.grad_norm:.3g} "
            f"| {last.grad_norm:.3g} | {first.grad_norm / last.grad_norm:.3g} | {largest:.3g} |"
        )
    return "\n".join(rows) + "\n"
