"""IR -> IR rewrites, one verb-named module each, run by `run` in the declared order `PIPELINE`.

Every pass has one signature: (model, weights, options) -> (model, weights, report or None); a pass that the
options do not ask for returns its inputs unchanged and no report.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

from resnetc.core.ir import Model
from resnetc.core.options import Options
from resnetc.lowering.verify import verify
from resnetc.weights.arrays import Weights

Pass = Callable[[Model, Weights, Options], tuple[Model, Weights, str | None]]


def fold_bn(model: Model, weights: Weights, options: Options) -> tuple[Model, Weights, str | None]:
    """BatchNorm folded into the convolution before it (exact in eval mode), where the options ask for it.
    (Not named after its module: importing `passes.fold_batchnorm` rebinds that name in this package.)"""
    if not options.folds_batchnorm:
        return model, weights, None
    from resnetc.passes.fold_batchnorm import fold_batchnorm

    graph, weights, report = fold_batchnorm(model.graph, weights)
    return replace(model, graph=graph), weights, str(report)


def fold_constant_weights(model: Model, weights: Weights, options: Options) -> tuple[Model, Weights, str | None]:
    """Weights an op would recompute on every run (weight standardisation) computed once: always, since every
    ONNX graph resnetc writes is an inference graph; a model with no such op is returned unchanged."""
    from resnetc import ops

    if not any(ops.get(node.op).inference_op for node in model.graph.nodes):
        return model, weights, None
    from resnetc.passes.fold_weights import fold_weights

    graph, weights, report = fold_weights(model.graph, weights)
    return replace(model, graph=graph), weights, str(report)


PIPELINE: tuple[Pass, ...] = (fold_constant_weights, fold_bn)


def run(model: Model, weights: Weights, options: Options) -> tuple[Model, Weights, list[str]]:
    """Every pass in order; the IR is verified after each pass that changed it."""
    reports = []
    for rewrite in PIPELINE:
        rewritten, weights, report = rewrite(model, weights, options)
        if rewritten is not model:
            verify(rewritten.graph)
        model = rewritten
        if report is not None:
            reports.append(report)
    return model, weights, reports
