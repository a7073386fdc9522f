"""Every shipped spec's generated module traces whole under torch.compile's front end (issue 23): one graph and
no graph break, in eval and in train mode (`torch._dynamo.explain`, which traces without compiling). A break
would split `resnetc train --compile` into pieces with Python between them.

The modules are built on the meta device: tracing needs shapes, not weights, so the largest timm models cost
no memory. The fast suite traces the spec of the simplest block kind (resnet20: basic blocks, option A's
zero-padding shortcut), stochastic depth (the only spec whose train-mode forward draws random numbers) and a
backbone (several outputs, a list); the slow suite traces every shipped spec."""

from __future__ import annotations

import pytest
import torch

from resnetc.api import lower
from resnetc.backends.torch.loading import model_class
from resnetc.frontend.shipped import shipped

FAST = ("resnet20", "timm/resnet50_droppath")  # a basic and a bottleneck block, drop path; backbones: slow
SPECS = [pytest.param(name, marks=() if name in FAST else pytest.mark.slow) for name in shipped()]


@pytest.mark.parametrize("name", SPECS)
def test_generated_module_traces_without_graph_breaks(name: str) -> None:
    import torch._dynamo as dynamo  # lazily: it takes seconds to import

    model = lower(str(shipped()[name]))
    with torch.device("meta"):
        module = model_class(model)()
    batch = torch.empty(2, *model.input_shape, device="meta")
    for training in (False, True):
        module.train(training)
        dynamo.reset()
        explained = dynamo.explain(module)(batch)
        mode = "train" if training else "eval"
        reasons = [str(reason) for reason in explained.break_reasons]
        assert explained.graph_break_count == 0, f"{name} ({mode}): {reasons}"
        assert explained.graph_count == 1, f"{name} ({mode}): {explained.graph_count} graphs"
    dynamo.reset()
