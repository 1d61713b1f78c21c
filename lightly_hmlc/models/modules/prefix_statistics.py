"""Running per-class statistics of projections keyed on label prefixes, kept on the device."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn
from torch import distributed as dist

from lightly_hmlc.models.modules._arguments import check_int

__all__ = ["Float64BuffersMixin", "LabelPrefixStatistics"]

# Renormalise the lazily decayed statistics before new batches' weights exceed this.
_MAX_LAZY_SCALE = 1e100


class Float64BuffersMixin(nn.Module):
    """Keeps the buffers named in ``_float64_buffers`` float64 and exact through any model
    cast (``model.half()`` would round running sums); they only move device.
    """

    _float64_buffers: tuple[str, ...] = ()

    def _apply(self, fn: Callable[[Tensor], Tensor], recurse: bool = True) -> Any:
        # Keep the originals aside, so that a cast never rounds them, and only move them.
        originals = {name: getattr(self, name) for name in self._float64_buffers}
        super()._apply(fn, recurse)
        device = self._pinned_device()
        for name, original in originals.items():
            setattr(self, name, original.to(device=device, dtype=torch.float64))
        self._moved(device)
        return self

    def _pinned_device(self) -> torch.device:
        raise NotImplementedError

    def _moved(self, device: torch.device) -> None:
        """Hook for state outside the buffers that must follow the module's device."""


class LabelPrefixStatistics(Float64BuffersMixin):
    """Decayed per-class count and sum, and per-level sum of squares, of projections.

    The classes of level l are the label prefixes 0..l; a sample counts at level l only if
    its labels 0..l are known. :meth:`update` never synchronises the device: each rank
    adds to a pending table of fixed shape, and decay (``momentum`` per step) is lazy.
    :meth:`merge`, called by all ranks together, lays the tables on the sorted union of
    their prefixes and all-reduces them, so the buffers (``class_keys`` [L, C, L],
    ``class_count`` [L, C], ``class_sum`` [L, C, D], ``level_sumsq`` [L, D]) agree.

    Examples:
        >>> stats = LabelPrefixStatistics(num_levels=2, dim=3, momentum=1.0)
        >>> stats.update(torch.ones(3, 3), torch.tensor([[0, 0], [0, 1], [1, -1]]))
        >>> stats.merge()
        >>> stats.num_classes.tolist(), stats.class_count[1, :2].tolist()
        ([2, 2], [1.0, 1.0])
    """

    class_keys: Tensor
    num_classes: Tensor
    class_count: Tensor
    class_sum: Tensor
    level_sumsq: Tensor
    _float64_buffers = ("class_count", "class_sum", "level_sumsq")

    def __init__(
        self,
        num_levels: int,
        dim: int,
        *,
        max_classes_per_level: int = 1024,
        momentum: float = 0.99,
        sync_distributed: bool = True,
        owner: str = "LabelPrefixStatistics",
    ) -> None:
        super().__init__()
        for name, value, minimum in (
            ("num_levels", num_levels, 1),
            ("dim", dim, 1),
            ("max_classes_per_level", max_classes_per_level, 2),
        ):
            check_int(name, value, minimum)
        if not 0.0 < momentum <= 1.0:
            raise ValueError(
                f"momentum must be in (0, 1] (decay of the class statistics per step; 1 keeps "
                f"plain sums), got {momentum}."
            )
        self.num_levels = num_levels
        self.dim = dim
        self.max_classes_per_level = max_classes_per_level
        self.momentum = momentum
        self.sync_distributed = sync_distributed
        self.owner = owner
        L, D, C = num_levels, dim, max_classes_per_level
        f64 = torch.float64
        self.register_buffer("class_keys", torch.full((L, C, L), -1, dtype=torch.long))
        self.register_buffer("num_classes", torch.zeros(L, dtype=torch.long))
        self.register_buffer("class_count", torch.zeros(L, C, dtype=f64))
        self.register_buffer("class_sum", torch.zeros(L, C, D, dtype=f64))
        self.register_buffer("level_sumsq", torch.zeros(L, D, dtype=f64))
        # This rank's statistics since the last merge; slot C collects unknowns/overflow.
        self._pending: dict[str, Tensor] = {}
        self._since_merge = 0  # decay steps not yet applied to the stored statistics

    @torch.no_grad()
    def update(self, z: Tensor, labels: Tensor) -> None:
        """Adds projections [B, D] and label paths [B, L] to this rank's pending statistics."""
        p = self._ensure_pending()
        scale = 1.0
        if self.momentum < 1.0:
            self._since_merge += 1
            scale = self.momentum ** (-self._since_merge)
            if scale > _MAX_LAZY_SCALE:
                self._apply_decay(None, None)
                scale = 1.0
        L = self.num_levels
        device = self.class_count.device
        x = z.detach().to(device=device, dtype=torch.float64)
        labels = labels.to(device=device, dtype=torch.long)
        # Level l counts a sample only if its whole prefix 0..l is known.
        valid = (labels >= 0).long().cumprod(dim=1).bool()  # [B, L]
        x_sq = x.square()
        columns = torch.arange(L, device=device)
        for level in range(L):
            ok = valid[:, level]
            rows = torch.where(columns <= level, labels, -1)  # [B, L]
            slot = self._lookup_or_insert(level, rows, ok)
            weight = ok.to(torch.float64) * scale
            p["class_count"][level].index_add_(0, slot, weight)
            p["class_sum"][level].index_add_(0, slot, x * weight[:, None])
            p["level_sumsq"][level].add_(weight @ x_sq)

    @torch.no_grad()
    def merge(self) -> None:
        """Adds every rank's pending statistics to the merged buffers; a ValueError if a level
        saw more prefixes than ``max_classes_per_level``.
        """
        p = self._ensure_pending()
        L, C, D = self.num_levels, self.max_classes_per_level, self.dim
        distributed = self._distributed()
        overflow = p["overflow"].to(torch.long).reshape(1)
        pending_keys = p["class_keys"][:, :C].contiguous()
        pending_num = p["num_classes"].clone()
        if distributed:
            dist.all_reduce(overflow, op=dist.ReduceOp.MAX)
            world = dist.get_world_size()
            all_keys = [torch.empty_like(pending_keys) for _ in range(world)]
            all_num = [torch.empty_like(pending_num) for _ in range(world)]
            dist.all_gather(all_keys, pending_keys)
            dist.all_gather(all_num, pending_num)
        else:
            all_keys, all_num = [pending_keys], [pending_num]
        own_num = pending_num.tolist()
        if bool(overflow.item()):
            self._reset_pending(None)
            raise ValueError(self._capacity_message())
        merged_num = self.num_classes.tolist()
        self._apply_decay(merged_num, own_num)

        # Sorted union of the label prefixes of all ranks: the same layout everywhere.
        nums = [num.tolist() for num in all_num]
        unions = []
        for level in range(L):
            rows = [self.class_keys[level, : merged_num[level]]]
            rows += [k[level, : num[level]] for k, num in zip(all_keys, nums, strict=True)]
            union = torch.unique(torch.cat(rows), dim=0)
            if union.shape[0] > C:
                self._reset_pending(own_num)
                raise ValueError(self._capacity_message(level, union.shape[0]))
            unions.append(union)
        sizes = [union.shape[0] for union in unions]
        offsets = [sum(sizes[:level]) for level in range(L)]

        # This rank's pending statistics on the union layout, all levels stacked.
        device = self.class_count.device
        add_count = torch.zeros(sum(sizes), dtype=torch.float64, device=device)
        add_sum = torch.zeros(sum(sizes), D, dtype=torch.float64, device=device)
        for level in range(L):
            own = offsets[level] + _match_rows(pending_keys[level, : own_num[level]], unions[level])
            add_count[own] = p["class_count"][level, : own_num[level]]
            add_sum[own] = p["class_sum"][level, : own_num[level]]
        add_sumsq = p["level_sumsq"].clone()
        if distributed:
            for tensor in (add_count, add_sum, add_sumsq):
                dist.all_reduce(tensor)

        for level in range(L):
            m, n_old = sizes[level], merged_num[level]
            part = slice(offsets[level], offsets[level] + m)
            old = _match_rows(self.class_keys[level, :n_old], unions[level])
            counts = add_count[part].index_add(0, old, self.class_count[level, :n_old])
            sums = add_sum[part].index_add(0, old, self.class_sum[level, :n_old])
            self.class_keys[level, :m] = unions[level]
            self.class_count[level, :m] = counts
            self.class_sum[level, :m] = sums
        self.num_classes.copy_(torch.tensor(sizes))
        self.level_sumsq.add_(add_sumsq)
        self._reset_pending(own_num)

    def has_statistics(self) -> bool:
        return bool((self.class_count.sum() > 0).item())

    def get_extra_state(self) -> dict[str, Tensor]:
        """The pending statistics of this rank, so that a checkpoint loses no batch."""
        state = {name: value.clone() for name, value in self._pending.items()}
        state["since_merge"] = torch.tensor(self._since_merge)
        return state

    def set_extra_state(self, state: Any) -> None:
        if not isinstance(state, dict) or "since_merge" not in state:
            raise ValueError(f"Expected the dict of get_extra_state(), got {type(state)}.")
        state = dict(state)
        self._since_merge = int(state.pop("since_merge"))
        device = self.class_count.device
        self._pending = {name: value.to(device) for name, value in state.items()}

    def extra_repr(self) -> str:
        return (
            f"num_levels={self.num_levels}, dim={self.dim}, "
            f"max_classes_per_level={self.max_classes_per_level}, momentum={self.momentum}"
        )

    def _pinned_device(self) -> torch.device:
        return self.class_keys.device

    def _moved(self, device: torch.device) -> None:
        self._pending = {name: value.to(device) for name, value in self._pending.items()}

    def _new_pending(self, device: torch.device) -> dict[str, Tensor]:
        L, D, C = self.num_levels, self.dim, self.max_classes_per_level
        f64 = torch.float64
        return {
            "class_keys": torch.full((L, C + 1, L), -1, dtype=torch.long, device=device),
            "num_classes": torch.zeros(L, dtype=torch.long, device=device),
            "class_count": torch.zeros(L, C + 1, dtype=f64, device=device),
            "class_sum": torch.zeros(L, C + 1, D, dtype=f64, device=device),
            "level_sumsq": torch.zeros(L, D, dtype=f64, device=device),
            "overflow": torch.zeros((), dtype=torch.bool, device=device),
        }

    def _ensure_pending(self) -> dict[str, Tensor]:
        device = self.class_count.device
        if not self._pending:
            self._pending = self._new_pending(device)
        elif self._pending["class_count"].device != device:
            self._pending = {name: value.to(device) for name, value in self._pending.items()}
        return self._pending

    def _apply_decay(self, merged_num: list[int] | None, own_num: list[int] | None) -> None:
        """Multiplies the stored statistics by the pending decay (only the used rows when known)."""
        factor = self.momentum**self._since_merge
        self._since_merge = 0
        if factor == 1.0:
            return
        p = self._ensure_pending()
        merged_rows = self.max_classes_per_level if merged_num is None else max(merged_num)
        own_rows = self.max_classes_per_level + 1 if own_num is None else max(own_num)
        self.class_count[:, :merged_rows].mul_(factor)
        self.class_sum[:, :merged_rows].mul_(factor)
        self.level_sumsq.mul_(factor)
        p["class_count"][:, :own_rows].mul_(factor)
        p["class_sum"][:, :own_rows].mul_(factor)
        p["level_sumsq"].mul_(factor)

    def _lookup_or_insert(self, level: int, rows: Tensor, ok: Tensor) -> Tensor:
        """Slot of each row in the pending table of ``level``, new prefixes getting new slots.

        Table and batch rows are sorted together so that equal prefixes form groups: fixed
        shapes, no device read. Unknown prefixes and overflow go to the spare slot C.
        """
        p = self._pending
        C = self.max_classes_per_level
        width = level + 1
        device = rows.device
        n = p["num_classes"][level].clone()
        slots = torch.arange(C, device=device)
        used = slots < n
        # Sentinels keep unused table rows and unknown batch rows out of real groups.
        table = torch.where(used[:, None], p["class_keys"][level, :C, :width], -2)
        batch = torch.where(ok[:, None], rows[:, :width], -3)
        keys = torch.cat([table, batch])  # [C + B, width]
        order = torch.arange(keys.shape[0], device=device)
        for column in reversed(range(width)):
            order = order[torch.argsort(keys[order, column], stable=True)]
        ordered = keys[order]
        boundary = torch.ones(keys.shape[0], dtype=torch.bool, device=device)
        boundary[1:] = (ordered[1:] != ordered[:-1]).any(-1)
        group = torch.empty_like(order)
        group[order] = torch.cumsum(boundary.long(), 0) - 1
        # Slot of the table row in each group (-1: none), then look up the batch rows.
        table_slot = torch.full_like(order, -1)
        table_slot.scatter_reduce_(0, group[:C], torch.where(used, slots, -1), "amax")
        batch_group = group[C:]
        found_slot = table_slot[batch_group]
        found = ok & (found_slot >= 0)
        new = ok & ~found
        # Groups with a new prefix get consecutive slots after the used ones.
        is_new = torch.zeros_like(order).scatter_reduce_(0, batch_group, new.long(), "amax")
        new_slot = n + torch.cumsum(is_new, 0)[batch_group] - 1
        slot = torch.where(found, found_slot, torch.where(new, new_slot, C)).clamp_max(C)
        p["overflow"] |= (new & (new_slot >= C)).any()
        # Rows of one group write the same key to the same slot.
        write = torch.where(new & (new_slot < C), new_slot, C)
        p["class_keys"][level, write] = rows
        p["num_classes"][level] = (n + is_new.sum()).clamp_max(C)
        return slot

    def _distributed(self) -> bool:
        return (
            self.sync_distributed
            and dist.is_available()
            and dist.is_initialized()
            and dist.get_world_size() > 1
        )

    def _reset_pending(self, own_num: list[int] | None) -> None:
        """Clears the pending tables (the used rows when known, and the spare slot)."""
        p = self._ensure_pending()
        C = self.max_classes_per_level
        if own_num is None:
            self._pending = self._new_pending(self.class_count.device)
            return
        rows = [*range(max(own_num)), C]
        p["class_keys"][:, rows] = -1
        p["class_count"][:, rows] = 0
        p["class_sum"][:, rows] = 0
        p["level_sumsq"].zero_()
        p["num_classes"].zero_()
        p["overflow"].zero_()

    def _capacity_message(self, level: int | None = None, seen: int | None = None) -> str:
        where = f" (level {level} has {seen})" if level is not None else ""
        return (
            f"{self.owner} saw more than max_classes_per_level="
            f"{self.max_classes_per_level} distinct label prefixes at one level{where}. "
            f"Raise max_classes_per_level to at least the number of classes at the finest "
            f"level."
        )


def _match_rows(rows: Tensor, table: Tensor) -> Tensor:
    """Index in ``table`` of each row of ``rows`` (every row must be present)."""
    if rows.shape[0] == 0:
        return torch.zeros(0, dtype=torch.long, device=rows.device)
    return (rows[:, None] == table[None]).all(-1).to(torch.uint8).argmax(1)
