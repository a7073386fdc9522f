"""The pictures: training curves (the degradation figure) and the probe's signal against depth.

matplotlib is an optional dependency (`resnetc[experiment]`); without it, asking for a figure is a
usage error that says what to install.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from resnetc.core.errors import UsageError

if TYPE_CHECKING:
    from resnetc.train.probe import Probe  # imports torch: the training curves do not need it


def _pyplot() -> Any:
    try:
        import matplotlib

        matplotlib.use("Agg")  # files only: there is no screen here or in CI
        from matplotlib import pyplot
    except ImportError:
        raise UsageError("figures need matplotlib: pip install 'resnetc[experiment]'") from None
    return pyplot


def _style(name: str) -> str:
    return "--" if name.startswith("plain") else "-"  # plain nets dashed, residual nets solid


def probe_figure(probes: Sequence[Probe], path: str | Path) -> None:
    """Gradient norm and output variance of every weighted layer against its depth, one line per model."""
    pyplot = _pyplot()
    figure, (gradients, signal) = pyplot.subplots(1, 2, figsize=(12, 4.5), constrained_layout=True)
    for result in probes:
        name = Path(result.spec).stem
        depths = [layer.depth for layer in result.layers]
        gradients.plot(depths, [layer.grad_norm for layer in result.layers], _style(name), label=name, lw=1.2)
        signal.plot(depths, [layer.output_variance for layer in result.layers], _style(name), label=name, lw=1.2)
    for axes, title in ((gradients, "‖∂loss/∂W‖ of each weighted layer"), (signal, "variance of each layer's output")):
        axes.set_xscale("log")
        axes.set_yscale("log")
        axes.set_xlabel("depth (weighted layer, in forward order)")
        axes.set_title(title)
        axes.grid(True, which="both", alpha=0.3)
    gradients.legend(fontsize=8, ncol=2)
    figure.suptitle("At initialisation: one seeded batch, train mode (dashed: plain, solid: residual)")
    figure.savefig(path, dpi=110)
    pyplot.close(figure)


def responses_figure(probes: Sequence[Probe], path: str | Path, title: str) -> None:
    """He et al. 2015, Fig. 7: the standard deviation of each 3x3 layer's response (after BN, before the
    nonlinearity) of trained models, in the network's order (top) and sorted by magnitude (bottom)."""
    pyplot = _pyplot()
    figure, (ordered, ranked) = pyplot.subplots(2, 1, figsize=(8, 7), constrained_layout=True)
    colours: dict[str, str] = {}
    for result in probes:
        name = Path(result.spec).stem
        stds = [layer.response_std for layer in result.layers if layer.response_std is not None]
        depth = name.removeprefix("plain").removeprefix("resnet")
        colour = colours.setdefault(depth, f"C{len(colours)}")  # one colour per depth, as in the paper
        ordered.plot(range(1, len(stds) + 1), stds, _style(name), color=colour, label=name, lw=1.2)
        ranked.plot(range(1, len(stds) + 1), sorted(stds, reverse=True), _style(name), color=colour, label=name)
    ordered.set_xlabel("layer index (original)")
    ranked.set_xlabel("layer index (sorted by magnitude)")
    for axes in (ordered, ranked):
        axes.set_ylabel("std")
        axes.grid(True, alpha=0.3)
        axes.legend(fontsize=8)
    figure.suptitle(title)
    figure.savefig(path, dpi=110)
    pyplot.close(figure)


def curves_figure(runs: dict[str, list[dict[str, Any]]], path: str | Path, title: str) -> None:
    """Training error (and test error, where logged) per epoch, one line per model: the paper's Fig. 6."""
    pyplot = _pyplot()
    has_test = any(epoch.get("test_error") is not None for epochs in runs.values() for epoch in epochs)
    figure, panels = pyplot.subplots(1, 2 if has_test else 1, figsize=(12 if has_test else 6, 4.5), squeeze=False)
    panels = panels[0]
    colours = {}
    for name, epochs in runs.items():
        depth = name.removeprefix("plain").removeprefix("resnet")
        colour = colours.setdefault(depth, f"C{len(colours)}")  # one colour per depth, as in the paper
        x = [epoch["epoch"] for epoch in epochs]
        panels[0].plot(x, [100 * epoch["train_error"] for epoch in epochs], _style(name), color=colour, label=name)
        if has_test:
            panels[1].plot(x, [100 * epoch["test_error"] for epoch in epochs], _style(name), color=colour, label=name)
    for axes, kind in zip(panels, ("training error", "test error"), strict=False):
        axes.set_xlabel("epoch")
        axes.set_ylabel(f"{kind} (%)")
        # Errors fall from ~90% to 0: logarithmic above 0.1%, linear below, so that 0 is drawn too.
        axes.set_yscale("symlog", linthresh=0.1)
        axes.set_ylim(0, 100)
        axes.grid(True, which="both", alpha=0.3)
        axes.legend()
    figure.suptitle(title)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    pyplot.close(figure)
