"""Every default loss and head compiles into one graph (inductor, CPU) with the eager values.

``check_values=False`` is the compiled configuration: the value checks read tensors on the
host, which a single graph cannot. Compiling is slow (tens of seconds per loss), so this
file compiles each default once, forward and backward together, and runs one G-HMLC
training loop, whose head refits on the host.
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import pytest
import torch
from torch import Tensor, nn
from torch._dynamo.utils import counters

from lightly_hmlc.loss import AHMLCLoss, GHMLCLoss, HMLCLoss, SupConLoss
from lightly_hmlc.models.modules.gmm_mask_head import GMMFeatureMaskHead

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


def _train_loop(fullgraph: bool | None) -> list[tuple[Tensor, Tensor, bool]]:
    """Loss, masks and whether the head refitted, after each of 8 G-HMLC training steps,
    eager (``fullgraph=None``) or compiled."""
    loss_fn = GHMLCLoss(3, DIM, check_values=False, warmup_steps=2, refit_every=3)
    head = loss_fn.mask_head
    assert isinstance(head, GMMFeatureMaskHead)
    call: Callable[..., Tensor] = loss_fn
    if fullgraph is not None:
        call = torch.compile(loss_fn, fullgraph=fullgraph)
    generator = torch.Generator().manual_seed(2)
    steps = []
    for step in range(8):
        out0, out1 = torch.randn(2, len(LABELS), DIM, generator=generator)
        last_fit = head.last_fit
        # Every compiled step after the first must reuse the first step's graph.
        with torch._dynamo.config.patch(error_on_recompile=call is not loss_fn and step > 0):
            loss = call(out0, out1, LABELS)
        steps.append((loss.detach(), head.masks.clone(), head.last_fit is not last_fit))
    return steps


@pytest.mark.slow
@pytest.mark.parametrize("fullgraph", [True, False])
def test_ghmlc_training_loop_compiles_once_and_refits_as_eager(fullgraph: bool) -> None:
    # The head's refit schedule runs on the host: compiled, it must neither recompile per
    # step nor break the graph, and it must refit on the eager steps with the eager masks.
    torch._dynamo.reset()
    counters.clear()
    eager = _train_loop(None)
    compiled = _train_loop(fullgraph)
    assert counters["stats"]["unique_graphs"] == 1
    assert [refit for *_, refit in eager] == [refit for *_, refit in compiled]
    assert sum(refit for *_, refit in eager) >= 2
    for (eager_loss, eager_masks, _), (loss, masks, _) in zip(eager, compiled, strict=True):
        assert torch.equal(masks, eager_masks)
        torch.testing.assert_close(loss, eager_loss, rtol=1e-5, atol=1e-6)


def test_head_step_op_steps_its_own_head_and_fills_given_copies() -> None:
    # The op that compiled graphs call: it finds the head by key (a copy gets its own key),
    # and writes the step into the buffers it is given, should they be copies.
    head = GMMFeatureMaskHead(3, DIM, warmup_steps=1, refit_every=1)
    twin = copy.deepcopy(head)
    assert twin._key != head._key
    generator = torch.Generator().manual_seed(3)
    for _ in range(2):
        z = torch.randn(len(LABELS), DIM, generator=generator)
        given = [buffer.clone() for buffer in head._step_buffers()]
        torch.ops.lightly_hmlc.gmm_head_step(head._key, z, LABELS, given)
        twin(z, LABELS)
        for got, own, want in zip(given, head._step_buffers(), twin._step_buffers(), strict=True):
            assert torch.equal(got, own) and torch.equal(own.nan_to_num(), want.nan_to_num())
    assert head._host_step == twin._host_step == 2 and bool(head.fitted)


@pytest.mark.slow
def test_checked_loss_compiles_once_for_batches_of_different_window_widths() -> None:
    # Compiled with its value checks (the suite's --compile): the graph breaks where a
    # value is read, and the window width read there is rounded up, so batches whose
    # largest coarse group differs reuse the graph instead of recompiling each time.
    torch._dynamo.reset()
    loss_fn = torch.compile(HMLCLoss("hmce", hierarchy_margin=0.2))
    generator = torch.Generator().manual_seed(2)

    def batch(coarse_classes: int) -> tuple[Tensor, Tensor, Tensor]:
        coarse = torch.arange(12) % coarse_classes  # largest coarse group: 24 / classes
        labels = torch.stack([coarse, coarse * 4 + torch.arange(12) % 4], dim=1)
        out0 = torch.randn(12, DIM, generator=generator).requires_grad_(True)
        return out0, torch.randn(12, DIM, generator=generator), labels

    loss_fn(*batch(2)).backward()
    with torch._dynamo.config.patch(error_on_recompile=True):
        for classes in (3, 4, 6):
            out0, out1, labels = batch(classes)
            compiled = loss_fn(out0, out1, labels)
            compiled.backward()
            eager = HMLCLoss("hmce", hierarchy_margin=0.2)(out0, out1, labels)
            torch.testing.assert_close(compiled, eager, rtol=1e-5, atol=1e-6)
