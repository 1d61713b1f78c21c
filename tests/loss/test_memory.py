"""memory=(features, labels): extra contrast rows, checked against a plain computation."""

from __future__ import annotations

from pathlib import Path
from typing import Any, cast

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lightly_hmlc.loss import HMLCLoss, SupConLoss
from lightly_hmlc.loss.masked import AHMLCLoss, MaskedHMLCLoss
from lightly_hmlc.models.modules import AttentionMaskHead, HierarchicalMemoryBank
from tests.loss import naive
from tests.loss.test_checks import _SyncRecorder
from tests.two_ranks import WORLD_SIZE, run_on_two_ranks

BATCH, MEMORY, DIM = 6, 9, 5


pytestmark = pytest.mark.usefixtures("one_thread")


def plain_level_means(
    level_rows: list[Tensor], paths: list[list[int]], num_anchors: int, temperature: float
) -> list[Tensor]:
    """Mean SupCon term per level; only the first ``num_anchors`` rows are anchors.

    ``level_rows[h]`` are the (normalised, masked) features of ALL rows at level h,
    batch rows first, memory rows after them.
    """
    means = []
    for level, z in enumerate(level_rows):
        n = z.shape[0]
        terms = []
        for i in range(num_anchors):
            prefix = paths[i][: level + 1]
            if any(value < 0 for value in prefix):
                continue
            positives = [j for j in range(n) if j != i and paths[j][: level + 1] == prefix]
            if not positives:
                continue
            others = torch.stack([z[i] @ z[a] / temperature for a in range(n) if a != i])
            log_denominator = torch.logsumexp(others, dim=0)
            terms.append(-torch.stack([z[i] @ z[p] / temperature for p in positives]).mean())
            terms[-1] = terms[-1] + log_denominator
        means.append(torch.stack(terms).mean() if terms else z.sum() * 0.0)
    return means


def plain_pair_level_means(
    level_rows: list[Tensor], paths: list[list[int]], num_anchors: int, temperature: float
) -> list[Tensor]:
    """As :func:`plain_level_means` with HiConE per pair: pair (i, p) at level l costs at
    least the anchor's mean pair loss at every finer level where it has positives."""

    def positives(i: int, level: int) -> list[int]:
        prefix = paths[i][: level + 1]
        if any(value < 0 for value in prefix):
            return []
        return [j for j in range(len(paths)) if j != i and paths[j][: level + 1] == prefix]

    def pair(level: int, i: int, p: int) -> Tensor:
        z = level_rows[level]
        others = torch.stack([z[i] @ z[a] / temperature for a in range(len(z)) if a != i])
        return torch.logsumexp(others, dim=0) - z[i] @ z[p] / temperature

    num_levels = len(level_rows)
    means = []
    for level in range(num_levels):
        terms = []
        for i in range(num_anchors):
            finer = [
                torch.stack([pair(f, i, q) for q in positives(i, f)]).mean()
                for f in range(level + 1, num_levels)
                if positives(i, f)
            ]
            pairs = []
            for p in positives(i, level):
                loss = pair(level, i, p)
                for bound in finer:
                    loss = torch.maximum(loss, bound)
                pairs.append(loss)
            if pairs:
                terms.append(torch.stack(pairs).mean())
        means.append(torch.stack(terms).mean() if terms else level_rows[0].sum() * 0.0)
    return means


def plain_hmce(means: list[Tensor]) -> Tensor:
    """HMCE with the constraint on the batch-mean level terms (hce_form="batch_mean")."""
    num_levels = len(means)
    means = [torch.stack(means[level:]).max() for level in range(num_levels)]
    weights = naive.penalty_weights(num_levels, "exp")
    return naive.weighted_sum(weights, means) / sum(weights)


def plain_weighted(means: list[Tensor]) -> Tensor:
    weights = naive.penalty_weights(len(means), "exp")
    return naive.weighted_sum(weights, means) / sum(weights)


def _data(seed: int = 0, memory: int = MEMORY) -> tuple[Tensor, ...]:
    generator = torch.Generator().manual_seed(seed)
    out0 = torch.randn(BATCH, DIM, generator=generator, dtype=torch.float64)
    out1 = torch.randn(BATCH, DIM, generator=generator, dtype=torch.float64)
    labels = naive.random_tree_labels(BATCH + memory, [2, 3], generator, unknown=0.3)
    bank = torch.randn(memory, DIM, generator=generator, dtype=torch.float64)
    return out0, out1, labels[:BATCH], bank, labels[BATCH:]


def _plain(
    out0: Tensor,
    out1: Tensor,
    labels: Tensor,
    bank: Tensor,
    bank_labels: Tensor,
    temperature: float,
    masks: Tensor | None = None,
    bank_masks: Tensor | None = None,
    pair: bool = False,
) -> list[Tensor]:
    rows = torch.cat([F.normalize(torch.cat([out0, out1]), dim=1), F.normalize(bank, dim=1)])
    num_levels = labels.shape[1]
    if masks is None:
        level_rows = [rows] * num_levels
    else:
        all_masks = torch.cat(
            [masks.expand(2 * BATCH, -1, -1), bank_masks.expand(len(bank), -1, -1)]  # type: ignore[union-attr]
        )
        level_rows = [F.normalize(rows * all_masks[:, h], dim=1) for h in range(num_levels)]
    paths = labels.tolist() * 2 + bank_labels.tolist()
    means = plain_pair_level_means if pair else plain_level_means
    return means(level_rows, paths, 2 * BATCH, temperature)


@pytest.mark.parametrize("hce_form", ["anchor_mean", "batch_mean"])
def test_hmlc_with_memory_equals_plain_computation_over_batch_and_queue(hce_form: str) -> None:
    out0, out1, labels, bank, bank_labels = _data()
    assert bool((bank_labels < 0).any()) and bool((labels < 0).any())  # -1 on both sides
    out0.requires_grad_(True)
    loss, level_losses = HMLCLoss("hmce", temperature=0.3, hce_form=hce_form)(
        out0, out1, labels, memory=(bank, bank_labels), return_level_losses=True
    )
    means = _plain(out0, out1, labels, bank, bank_labels, 0.3)
    torch.testing.assert_close(level_losses, torch.stack(means).detach())
    if hce_form == "anchor_mean":
        expected = plain_weighted(_plain(out0, out1, labels, bank, bank_labels, 0.3, pair=True))
    else:
        expected = plain_hmce(means)
    torch.testing.assert_close(loss, expected)
    (grad,) = torch.autograd.grad(loss, [out0])
    (expected_grad,) = torch.autograd.grad(expected, [out0])
    torch.testing.assert_close(grad, expected_grad)


@pytest.mark.parametrize("loss_type", ["hmc", "hce"])
def test_memory_changes_the_loss_and_gradients_match(loss_type: str) -> None:
    out0, out1, labels, bank, bank_labels = _data(1)
    out0.requires_grad_(True)
    loss_fn = HMLCLoss(loss_type, temperature=0.5, hce_form="batch_mean")
    loss = loss_fn(out0, out1, labels, memory=(bank, bank_labels))
    (grad,) = torch.autograd.grad(loss, [out0])
    means = _plain(out0, out1, labels, bank, bank_labels, 0.5)
    if loss_type == "hce":
        expected = torch.stack([torch.stack(means[h:]).max() for h in range(2)]).mean()
    else:
        weights = naive.penalty_weights(2, "exp")
        expected = naive.weighted_sum(weights, means) / sum(weights)
    (expected_grad,) = torch.autograd.grad(expected, [out0])
    torch.testing.assert_close(loss, expected)
    torch.testing.assert_close(grad, expected_grad)
    assert not torch.allclose(loss, loss_fn(out0, out1, labels))


def test_empty_memory_is_no_memory() -> None:
    out0, out1, labels, bank, bank_labels = _data(2)
    loss_fn = HMLCLoss("hmce")
    empty = (bank[:0], bank_labels[:0])
    torch.testing.assert_close(
        loss_fn(out0, out1, labels, memory=empty), loss_fn(out0, out1, labels)
    )


@pytest.mark.parametrize("paths", [False, True])
def test_supcon_with_memory_equals_plain_computation(paths: bool) -> None:
    out0, out1, labels, bank, bank_labels = _data(3)
    if not paths:
        labels, bank_labels = labels[:, -1], bank_labels[:, -1]
    loss = SupConLoss(temperature=0.4)(out0, out1, labels, memory=(bank, bank_labels))
    if paths:  # the whole path is the class; an entirely unknown path stays unknown
        all_paths = torch.cat([labels, bank_labels])
        _, ids = torch.unique(all_paths, dim=0, return_inverse=True)
        ids = torch.where((all_paths < 0).all(dim=1), -1, ids)
        labels, bank_labels = ids[:BATCH], ids[BATCH:]
    means = _plain(out0, out1, labels.reshape(-1, 1), bank, bank_labels.reshape(-1, 1), 0.4)
    torch.testing.assert_close(loss, means[0])


class FixedMaskHead(nn.Module):
    def __init__(self, masks: Tensor) -> None:
        super().__init__()
        self.masks = nn.Parameter(masks, requires_grad=False)

    def forward(self, z: Tensor, labels: Tensor | None = None) -> Tensor:
        return self.masks.unsqueeze(0)


@pytest.mark.parametrize("hce_form", ["anchor_mean", "batch_mean"])
@pytest.mark.parametrize("kind", ["partition", "overlapping"])
def test_shared_masks_apply_to_memory_rows(kind: str, hce_form: str) -> None:
    out0, out1, labels, bank, bank_labels = _data(4)
    if kind == "partition":
        masks = torch.tensor([[1.0, 0.0, 1.0, 0.0, 0.0], [0.0, 1.0, 0.0, 1.0, 1.0]])
    else:
        masks = torch.tensor([[1.0, 1.0, 1.0, 0.0, 0.0], [0.0, 1.0, 0.0, 1.0, 1.0]])
    masks = masks.double()
    memory = (bank, bank_labels)
    chain = HMLCLoss("hmce", temperature=0.3, hce_form=hce_form)(
        out0, out1, labels, masks=masks[None], memory=memory
    )
    convenience = MaskedHMLCLoss(FixedMaskHead(masks), temperature=0.3, hce_form=hce_form)(
        out0, out1, labels, memory=memory
    )
    pair = hce_form == "anchor_mean"
    means = _plain(out0, out1, labels, bank, bank_labels, 0.3, masks[None], masks[None], pair)
    expected = plain_weighted(means) if pair else plain_hmce(means)
    torch.testing.assert_close(chain, expected)
    torch.testing.assert_close(convenience, expected)


def test_per_row_soft_masks_with_memory_masks_and_their_gradients() -> None:
    out0, out1, labels, bank, bank_labels = _data(5)
    generator = torch.Generator().manual_seed(9)
    masks = torch.rand(2 * BATCH, 2, DIM, generator=generator, dtype=torch.float64)
    bank_masks = torch.rand(MEMORY, 2, DIM, generator=generator, dtype=torch.float64)
    masks.requires_grad_(True)
    bank_masks.requires_grad_(True)
    loss = HMLCLoss("hmce", temperature=0.3, hce_form="batch_mean")(
        out0, out1, labels, masks=masks, memory=(bank, bank_labels), memory_masks=bank_masks
    )
    grads = torch.autograd.grad(loss, [masks, bank_masks])
    expected = plain_hmce(_plain(out0, out1, labels, bank, bank_labels, 0.3, masks, bank_masks))
    expected_grads = torch.autograd.grad(expected, [masks, bank_masks])
    torch.testing.assert_close(loss, expected)
    for got, want in zip(grads, expected_grads, strict=True):
        torch.testing.assert_close(got, want)


def test_a_hmlc_convenience_masks_memory_rows_with_its_head() -> None:
    out0, out1, labels, bank, bank_labels = _data(6)
    torch.manual_seed(0)
    loss_fn = AHMLCLoss(num_levels=2, dim=DIM, init_std=1.0).double()
    got = loss_fn(out0, out1, labels, memory=(bank, bank_labels))
    head = cast(AttentionMaskHead, loss_fn.mask_head)
    z = F.normalize(torch.cat([out0, out1]), dim=1)
    expected = HMLCLoss("hmce", hierarchy_margin=0.2)(  # A-HMLC's default margin
        out0,
        out1,
        labels,
        masks=head(z),
        memory=(bank, bank_labels),
        memory_masks=head(F.normalize(bank, dim=1)),
    )
    torch.testing.assert_close(got, expected + head.regularization(head(z)))


def test_a_masked_loss_checks_its_memory_once(monkeypatch: pytest.MonkeyPatch) -> None:
    # The head needs the checked rows before the level terms run; they must not check
    # (and, with check_values, synchronise on) the same rows a second time.
    import lightly_hmlc.loss._batch as memory_module

    memory_checks = []
    check_label_paths = memory_module.check_label_paths

    def counting_check(*args: Any, **kwargs: Any) -> Tensor:
        memory_checks.append(kwargs.get("name"))
        return check_label_paths(*args, **kwargs)

    monkeypatch.setattr(memory_module, "check_label_paths", counting_check)
    out0, out1, labels, bank, bank_labels = _data(6)
    loss_fn = AHMLCLoss(num_levels=2, dim=DIM, init_std=1.0).double()
    loss_fn(out0, out1, labels, memory=(bank, bank_labels))
    assert memory_checks == ["memory_labels"]
    # A plain loss checks the memory it is given (once, too).
    HMLCLoss("hmce")(out0, out1, labels, memory=(bank, bank_labels))
    assert memory_checks == ["memory_labels", "memory_labels"]


def _error(**kwargs: object) -> None:
    out0, out1, labels, bank, bank_labels = _data(7)
    loss_fn = kwargs.pop("loss_fn", HMLCLoss("hmce"))
    loss_fn(out0, out1, labels, **kwargs)  # type: ignore[operator]


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"memory": torch.randn(3, DIM)}, "memory must be a tuple"),
        ({"memory": (torch.randn(3, DIM + 1), torch.zeros(3, 2).long())}, r"shape \[K, 5\]"),
        ({"memory": (torch.randn(3, DIM), torch.zeros(3, 3).long())}, "3 levels but 2"),
        ({"memory": (torch.randn(3, DIM), torch.zeros(4, 2).long())}, "4 rows but 3"),
        ({"memory": (torch.randn(3, DIM), torch.zeros(3, 2))}, "memory_labels must be integers"),
        ({"memory": (torch.randn(3, DIM), torch.zeros(3, 2, dtype=torch.complex64))}, "integers"),
        ({"memory": (torch.randn(3, DIM), torch.full((3, 2), -3))}, "below -1"),
        ({"memory": (torch.full((3, DIM), float("nan")), torch.zeros(3, 2).long())}, "NaN"),
        (
            {
                "masks": torch.rand(2 * BATCH, 2, DIM).double(),
                "memory": (torch.randn(3, DIM).double(), torch.zeros(3, 2).long()),
            },
            "memory_masks is None",
        ),
        (
            {
                "masks": torch.rand(1, 2, DIM).double(),
                "memory": (torch.randn(3, DIM).double(), torch.zeros(3, 2).long()),
                "memory_masks": torch.rand(2, 2, DIM).double(),
            },
            r"memory_masks has shape \(2, 2, 5\)",
        ),
        ({"memory_masks": torch.rand(1, 2, DIM).double()}, "without masks"),
    ],
)
def test_bad_memory_raises_a_clear_error(kwargs: dict[str, object], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        _error(**kwargs)


# --- 2 gloo ranks: identical queues, loss == single-process loss on global batch ∪ queue ---

CONFIGS = ["supcon", "hmce", "partition", "soft"]


def _global_step(step: int) -> tuple[Tensor, Tensor, Tensor]:
    generator = torch.Generator().manual_seed(100 + step)
    size = WORLD_SIZE * BATCH
    out0 = torch.randn(size, DIM, generator=generator, dtype=torch.float64)
    out1 = torch.randn(size, DIM, generator=generator, dtype=torch.float64)
    return out0, out1, naive.random_tree_labels(size, [2, 3], generator, unknown=0.25)


def _masks(kind: str, rows: int) -> Tensor | None:
    if kind == "partition":
        return torch.tensor([[[1.0, 0.0, 1.0, 0.0, 0.0], [0.0, 1.0, 0.0, 1.0, 1.0]]]).double()
    if kind == "soft":
        generator = torch.Generator().manual_seed(rows)
        return torch.rand(rows, 2, DIM, generator=generator, dtype=torch.float64)
    return None


def _loss(kind: str, gather: bool) -> nn.Module:
    if kind == "supcon":
        return SupConLoss(temperature=0.3, gather_distributed=gather)
    return HMLCLoss("hmce", temperature=0.3, gather_distributed=gather)


def _call(
    kind: str,
    loss_fn: nn.Module,
    out0: Tensor,
    out1: Tensor,
    labels: Tensor,
    memory: tuple[Tensor, Tensor],
    rows: slice,
) -> Tensor:  # noqa: E501
    if kind == "supcon":
        return loss_fn(out0, out1, labels, memory=memory)  # type: ignore[no-any-return]
    masks = _masks(kind, 2 * WORLD_SIZE * BATCH)
    memory_masks = None
    if kind == "soft":
        assert masks is not None
        # Per-row masks of the global batch rows [view 0 | view 1], and of the queue.
        halves = masks.view(2, WORLD_SIZE * BATCH, 2, DIM)[:, rows].reshape(-1, 2, DIM)
        memory_masks = _masks(kind, len(memory[0]))
        masks = halves
    return loss_fn(out0, out1, labels, masks=masks, memory=memory, memory_masks=memory_masks)  # type: ignore[no-any-return]


def _rank_results(rank: int) -> list[tuple[Any, ...]]:
    results = []
    rows = slice(rank * BATCH, (rank + 1) * BATCH)
    for kind in CONFIGS:
        bank = HierarchicalMemoryBank(8, DIM, 2, gather_distributed=True).double()
        for step in range(3):
            out0, out1, labels = _global_step(step)
            local0 = out0[rows].clone().requires_grad_(True)
            local1 = out1[rows].clone().requires_grad_(True)
            memory = bank(local1.detach(), labels[rows])
            loss = _call(kind, _loss(kind, True), local0, local1, labels[rows], memory, rows)
            loss.backward()
            results.append((kind, step, memory, loss.detach(), local0.grad, local1.grad))
    return results


@pytest.mark.distributed
def test_two_ranks_share_the_queue_and_the_global_loss(tmp_path: Path) -> None:
    per_rank = run_on_two_ranks(_rank_results, tmp_path)
    index = 0
    for kind in CONFIGS:
        bank = HierarchicalMemoryBank(8, DIM, 2).double()
        for step in range(3):
            out0, out1, labels = _global_step(step)
            out0.requires_grad_(True)
            out1.requires_grad_(True)
            memory = bank(out1.detach(), labels)  # one process, global batch
            everything = slice(0, WORLD_SIZE * BATCH)
            expected = _call(kind, _loss(kind, False), out0, out1, labels, memory, everything)
            grad0, grad1 = torch.autograd.grad(expected, [out0, out1])
            for rank in range(WORLD_SIZE):
                got_kind, got_step, got_memory, value, local0, local1 = per_rank[rank][index]
                assert (got_kind, got_step) == (kind, step)
                torch.testing.assert_close(got_memory, memory)  # identical queues
                torch.testing.assert_close(value, expected.detach(), msg=f"{kind} {step}")
                rows = slice(rank * BATCH, (rank + 1) * BATCH)
                torch.testing.assert_close(local0 / WORLD_SIZE, grad0[rows])
                torch.testing.assert_close(local1 / WORLD_SIZE, grad1[rows])
            index += 1
        assert len(memory[0]) == 8  # the queue filled up (and wrapped) during the test


@pytest.mark.parametrize(
    "make",
    [
        lambda: (SupConLoss(check_values=False), None),
        lambda: (HMLCLoss("hmc", check_values=False), "partition"),
        lambda: (HMLCLoss("hmce", check_values=False), "partition"),
        lambda: (HMLCLoss("hmce", hce_form="batch_mean", check_values=False), "soft"),
        lambda: (AHMLCLoss(2, DIM, hce_form="batch_mean", check_values=False).double(), None),
    ],
)
def test_memory_and_masks_without_value_checks_never_sync_inside_a_compiled_graph(
    make: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # As torch.compile traces it; eagerly the loss may read what picks its shapes.
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
    loss_fn, kind = make()
    out0, out1, labels, bank, bank_labels = _data(8)
    out0.requires_grad_(True)
    kwargs: dict[str, Any] = {"memory": (bank, bank_labels)}
    if isinstance(loss_fn, SupConLoss):
        labels, kwargs["memory"] = labels[:, -1], (bank, bank_labels[:, -1])
    elif kind is not None:
        kwargs["masks"] = _masks(kind, 2 * BATCH)
        if kind == "soft":
            kwargs["memory_masks"] = _masks(kind, MEMORY)
    recorder = _SyncRecorder()
    with recorder:
        loss = loss_fn(out0, out1, labels, **kwargs)
        loss.backward()
    assert recorder.syncs == []
    # The recorder does see the syncs of the value checks (and of the partition check).
    with _SyncRecorder() as checked:
        HMLCLoss("hmc")(out0, out1, _data(8)[2], masks=_masks("partition", 0))
    assert checked.syncs
