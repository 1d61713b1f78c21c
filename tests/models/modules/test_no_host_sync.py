"""The mask heads never read the device in a training step (issue 10), only at GMM refits.

Two checks. On the ``meta`` device a tensor has no data, so any host read of a value
(``.item()``, ``int()``, ``bool()``, ``.tolist()``, ``nonzero``, ``unique``) raises: a head
that runs there reads nothing. On the CPU a dispatch mode counts the ops that would
synchronise an accelerator, which shows the GMM head reads values at refit steps only.
"""

from collections import Counter
from collections.abc import Callable
from typing import Any

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from lightly_hmlc.models.modules import (
    AttentionMaskHead,
    FeatureMaskHead,
    GMMFeatureMaskHead,
)

# Ops whose result needs the value of a device tensor on the host.
_SYNCING_OPS = {
    "aten._local_scalar_dense.default",  # .item(), int(), float(), bool()
    "aten.is_nonzero.default",
    "aten.equal.default",
    "aten.nonzero.default",  # also boolean-mask indexing
    "aten.masked_select.default",
    "aten._unique2.default",
    "aten.unique_dim.default",
    "aten.unique_consecutive.default",
}


class _CountSyncs(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.counts: Counter[str] = Counter()

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        if str(func) in _SYNCING_OPS:
            self.counts[str(func)] += 1
        return func(*args, **(kwargs or {}))


pytestmark = pytest.mark.usefixtures("one_thread")


L, D, B = 3, 16, 8

HEADS: dict[str, Callable[[], FeatureMaskHead]] = {
    "gmm": lambda: GMMFeatureMaskHead(L, D, warmup_steps=10**6, momentum=0.9),
    "gmm-plain-sums": lambda: GMMFeatureMaskHead(L, D, warmup_steps=10**6, momentum=1.0),
    # 0.01 ** -51 > 1e100: the lazy decay is renormalised on the way, still without a read.
    "gmm-renormalised": lambda: GMMFeatureMaskHead(L, D, warmup_steps=10**6, momentum=0.01),
    "attention": lambda: AttentionMaskHead(L, D),
    "attention-softmax": lambda: AttentionMaskHead(L, D, gate="softmax", separation_weight=0.1),
}


@pytest.mark.parametrize("name", sorted(HEADS))
def test_a_training_step_reads_no_device_value(name: str) -> None:
    head = HEADS[name]().to("meta").train()
    z = torch.empty(2 * B, D, device="meta")
    labels = torch.empty(2 * B, L, dtype=torch.long, device="meta")
    steps = 60 if name == "gmm-renormalised" else 3
    for _ in range(steps):
        masks = head(z, labels)
        head.regularization(masks)
    assert masks.device.type == "meta" and masks.shape[1:] == (L, D)
    head.eval()
    assert head(z, None).shape[1:] == (L, D)


def test_a_meta_tensor_does_refuse_host_reads() -> None:
    # Guards the test above: it only proves something if host reads fail on meta.
    z = torch.empty(3, device="meta")
    for read in (lambda: int(z.sum()), lambda: z.tolist(), lambda: bool(z.any())):
        with pytest.raises((RuntimeError, NotImplementedError)):
            read()
    with pytest.raises((RuntimeError, NotImplementedError)):
        z[z > 0]  # noqa: B018


def test_the_gmm_head_reads_the_device_only_at_refit_steps() -> None:
    head = GMMFeatureMaskHead(2, 32, warmup_steps=3, refit_every=3)
    g = torch.Generator().manual_seed(0)
    reads = []
    for _ in range(7):
        fine = torch.randint(6, (32,), generator=g)
        z = torch.randn(32, 32, generator=g) + fine[:, None]
        with _CountSyncs() as counter:
            head(z, torch.stack([fine // 3, fine], 1))
        reads.append(sum(counter.counts.values()))
    refits = [step for step, count in enumerate(reads, start=1) if count > 0]
    assert refits == [3, 6], reads
