"""Every default loss and head compiles into one graph (inductor, CPU) with the eager values.

``check_values=False`` is the compiled configuration: the value checks read tensors on the
host, which a single graph cannot. Compiling is slow (tens of seconds per loss), so this
file compiles each default once, forward and backward together.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lightly_hmlc.loss import AHMLCLoss, GHMLCLoss, HMLCLoss, SupConLoss

DIM = 8
LABELS = torch.tensor([[0, 0, 0], [0, 0, 1], [0, 1, 2], [1, 2, 3], [1, 2, 3], [-1, -1, -1]])


def _make(name: str) -> nn.Module:
    torch.manual_seed(0)  # the same head weights for the eager and the compiled copy
    return {
        "supcon-margin": lambda: SupConLoss(hierarchy_margin=0.2, check_values=False),
        "hmce": lambda: HMLCLoss("hmce", check_values=False),
        "hmce-margin": lambda: HMLCLoss("hmce", hierarchy_margin=0.2, check_values=False),
        "g-hmlc": lambda: GHMLCLoss(3, DIM, check_values=False),
        "a-hmlc": lambda: AHMLCLoss(3, DIM, check_values=False),
    }[name]()


@pytest.mark.slow
@pytest.mark.parametrize("name", ["supcon-margin", "hmce", "hmce-margin", "g-hmlc", "a-hmlc"])
def test_compiles_with_fullgraph_and_gives_the_eager_values_and_gradients(name: str) -> None:
    torch._dynamo.reset()
    generator = torch.Generator().manual_seed(1)
    out0 = torch.randn(len(LABELS), DIM, generator=generator)
    out1 = torch.randn(len(LABELS), DIM, generator=generator)
    results = []
    for compiled in (False, True):
        loss_fn = _make(name)
        call = torch.compile(loss_fn, fullgraph=True) if compiled else loss_fn
        inputs = [out0.clone().requires_grad_(True), out1.clone().requires_grad_(True)]
        loss = call(*inputs, LABELS)
        loss.backward()
        found = [x.grad for x in inputs] + [p.grad for p in loss_fn.parameters()]
        results.append((loss.detach(), [g for g in found if g is not None]))
    (eager, eager_grads), (value, grads) = results
    assert len(grads) == len(eager_grads) >= 2
    torch.testing.assert_close(value, eager, rtol=1e-5, atol=1e-6)
    for got, want in zip(grads, eager_grads, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-6)
