"""Forward + backward time and peak memory of the hierarchical losses.

Compares, at dim 128 and several batch sizes:

- ``SupConLoss`` (one level);
- ``HMLCLoss`` (hmce) with 2, 3 and 4 levels;
- a straightforward per-level loop: one ``[2B, 2B]`` positive mask and one SupCon pass
  per level, written the usual way (the baseline the shared level core replaces);
- optionally the public reference implementation of Zhang et al., loaded at run time
  from a local clone given with ``--reference-repo`` (its ``losses/losses.py``; nothing
  of it is part of this package);
- the masked losses (group ``masked``), margin-free (``hierarchy_margin=0``: the
  margin, their default, has no fast masked path; group ``margin``): ``GHMLCLoss`` with
  fitted masks (nested, the default, and a partition, ``nested=False``) and
  ``AHMLCLoss``, each with its head in training mode (the GMM statistics update and the
  attention MLPs are part of the step), against the same masks through the general
  per-level path (full-width masked features, autograd's log-sum-exp, and for the
  per-pair form the dense ``[L, N, N]`` pair losses), which is what the masked losses
  ran before the fast masked level terms; both ``hce_form``s are measured (``pair``,
  the default, and ``batch_mean``);
- a memory bank (group ``memory``): HMCE with ``K`` extra contrast rows (``--memory``);
- the hierarchy margin (group ``margin``): ``SupConLoss``, HMCE, G-HMLC and A-HMLC with
  ``hierarchy_margin=0.2`` (the margin takes the dense per-level path, no fast masked one;
  0.2 is G-HMLC's and A-HMLC's default), with margin-free G-HMLC and A-HMLC
  (``hierarchy_margin=0``) beside them.

The summary tables give every row against SupCon, and the masked rows against HMCE L=3.

Peak memory on the CPU is the peak of the allocated total during one forward and
backward, replayed from ``torch.profiler``'s memory timeline; on CUDA it is
``torch.cuda.max_memory_allocated`` above the inputs.

Usage:
    python benchmarks/loss_speed.py --batch-sizes 256,1024,4096 --output runs/loss_speed.json
    python benchmarks/loss_speed.py --reference-repo /path/to/hierarchicalContrastiveLearning
    python benchmarks/loss_speed.py --groups masked --batch-sizes 1024 --threads 1
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import platform
import statistics
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from lightly_hmlc.loss import AHMLCLoss, GHMLCLoss, HMLCLoss, SupConLoss

# The general masked path is internal: it is timed here only as the baseline of the fast
# masked level terms.
from lightly_hmlc.loss._features import apply_masks, normalize_features
from lightly_hmlc.loss._gather import gather_for_loss, reduce_levels
from lightly_hmlc.loss._hce import pair_constrained_level_losses
from lightly_hmlc.loss._levels import aggregate_levels, anchor_level_losses, build_level_groups
from lightly_hmlc.models.modules import FeatureMaskHead

LossCall = Callable[[Tensor, Tensor, Tensor], Tensor]


def per_level_loop_loss(
    out0: Tensor, out1: Tensor, labels: Tensor, temperature: float = 0.1
) -> Tensor:
    """HMCE written the straightforward way: a positive mask and a SupCon pass per level."""
    z = F.normalize(torch.cat([out0, out1]).float(), dim=1)
    paths = labels.repeat(2, 1)
    n, num_levels = paths.shape
    logits = z @ z.t() / temperature
    not_self = ~torch.eye(n, dtype=torch.bool, device=z.device)
    log_prob = logits - torch.logsumexp(logits.masked_fill(~not_self, float("-inf")), 1, True)
    level_losses = []
    for level in range(num_levels):
        prefix = paths[:, : level + 1]
        positives = (prefix.unsqueeze(0) == prefix.unsqueeze(1)).all(-1) & not_self
        count = positives.sum(1)
        mean_log_prob = (log_prob * positives).sum(1) / count.clamp(min=1)
        level_losses.append(-(mean_log_prob[count > 0]).mean())
    terms = torch.stack(level_losses)
    terms = torch.flip(torch.cummax(torch.flip(terms, [0]), 0).values, [0])
    weights = torch.exp(1.0 / torch.arange(num_levels, 0, -1, device=z.device, dtype=torch.float32))
    return (weights * terms).sum() / weights.sum()


def fitted_ghmlc(
    num_levels: int,
    dim: int,
    hce_form: str = "anchor_mean",
    nested: bool = True,
    hierarchy_margin: float = 0.0,
) -> GHMLCLoss:
    """G-HMLC whose head fits its masks (nested by default, else a partition) on the first
    (warm-up) call, then never."""
    return GHMLCLoss(
        num_levels=num_levels,
        dim=dim,
        hce_form=hce_form,
        hierarchy_margin=hierarchy_margin,
        warmup_steps=1,
        refit_every=10**9,
        nested=nested,
    )


class GeneralMaskedPath:
    """A masked loss's head and aggregation, with the level terms of the general path."""

    def __init__(self, loss_fn: GHMLCLoss | AHMLCLoss) -> None:
        self.loss_fn = loss_fn

    def __call__(self, out0: Tensor, out1: Tensor, labels: Tensor) -> Tensor:
        loss_fn = self.loss_fn
        features = normalize_features(out0, out1)
        paths = labels.repeat(2, 1)
        masks = loss_fn.mask_head(features, paths)
        level_features = apply_masks(features, masks, paths.shape[1])
        batch = gather_for_loss(level_features, paths, False)
        groups = build_level_groups(batch.contrast_labels)
        if loss_fn.loss_type != "hmc" and loss_fn.hce_form != "batch_mean":
            # The dense per-pair forms: [L, N, N] pair losses on the per-level features.
            constrained, _, is_anchor = pair_constrained_level_losses(
                batch.anchors,
                batch.contrast,
                batch.anchor_index,
                groups,
                loss_fn.temperature,
                form=loss_fn.hce_form,
            )
            share, value = reduce_levels(constrained, is_anchor, False)
            weights = loss_fn.level_weights(len(value), share.dtype, share.device)
            loss = aggregate_levels(share, value, "hmc", weights)
        else:
            terms, is_anchor = anchor_level_losses(
                batch.anchors, batch.contrast, batch.anchor_index, groups, loss_fn.temperature
            )
            share, value = reduce_levels(terms, is_anchor, False)
            weights = loss_fn.level_weights(len(value), share.dtype, share.device)
            loss = aggregate_levels(share, value, loss_fn.loss_type, weights)
        head = loss_fn.mask_head
        assert isinstance(head, FeatureMaskHead)  # for mypy: nn.Module has no regularization
        result: Tensor = loss + head.regularization(masks)
        return result


class WithMemory:
    """HMCE with ``size`` random memory rows (a full queue) as extra contrast rows."""

    def __init__(self, size: int, dim: int, num_levels: int, device: torch.device) -> None:
        generator = torch.Generator().manual_seed(1)
        self.memory = (
            torch.randn(size, dim, generator=generator).to(device),
            tree_labels(size, num_levels, generator).to(device),
        )
        self.loss_fn = HMLCLoss("hmce", temperature=0.1)

    def __call__(self, out0: Tensor, out1: Tensor, labels: Tensor) -> Tensor:
        result: Tensor = self.loss_fn(out0, out1, labels, memory=self.memory)
        return result


def load_reference(repo: Path, loss_type: str = "hmce") -> LossCall:
    """Loads ``HMLC`` from a local clone of the reference repository."""
    spec = importlib.util.spec_from_file_location("hmlc_reference", repo / "losses" / "losses.py")
    if spec is None or spec.loader is None:
        raise FileNotFoundError(f"No losses/losses.py under {repo}.")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    reference = module.HMLC(temperature=0.1, layer_penalty=torch.exp, loss_type=loss_type)

    def call(out0: Tensor, out1: Tensor, labels: Tensor) -> Tensor:
        features = torch.stack([F.normalize(out0, dim=1), F.normalize(out1, dim=1)], dim=1)
        instance = torch.arange(labels.shape[0], device=labels.device).unsqueeze(1)
        result: Tensor = reference(features, torch.cat([labels, instance], dim=1))
        return result

    return call


def tree_labels(batch_size: int, num_levels: int, generator: torch.Generator) -> Tensor:
    """Label paths of a CIFAR-100-like tree: 4 children per node, <=100 leaves."""
    columns, previous = [], torch.zeros(batch_size, dtype=torch.long)
    for level in range(num_levels):
        width = 20 if level == 0 else 5
        previous = previous * width + torch.randint(0, width, (batch_size,), generator=generator)
        columns.append(previous)
    return torch.stack(columns, dim=1)


def measure(
    loss_fn: LossCall,
    batch_size: int,
    dim: int,
    num_levels: int,
    device: torch.device,
    repeats: int,
    seed: int = 0,
    cpu_time: bool = False,
    peak_memory: bool = True,
) -> tuple[float, float]:
    """Median seconds of forward + backward, and peak memory in MiB (NaN if skipped).

    ``cpu_time`` reads the process's CPU time instead of the wall clock: on a shared
    CPU machine with one torch thread it counts this process's work only.
    """
    clock = time.process_time if cpu_time else time.perf_counter
    generator = torch.Generator().manual_seed(seed)
    out0 = torch.randn(batch_size, dim, generator=generator).to(device).requires_grad_(True)
    out1 = torch.randn(batch_size, dim, generator=generator).to(device).requires_grad_(True)
    labels = tree_labels(batch_size, num_levels, generator).to(device)

    def step() -> None:
        out0.grad = out1.grad = None
        loss_fn(out0, out1, labels).backward()

    step()  # warm-up
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = clock()
        step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(clock() - start)
    return statistics.median(times), peak_memory_mib(step, device) if peak_memory else math.nan


def peak_memory_mib(step: Callable[[], None], device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        step()
        torch.cuda.synchronize()
        return (torch.cuda.max_memory_allocated() - base) / 2**20
    # The CPU has no allocator statistics: replay the profiler's allocation timeline.
    from torch.profiler._memory_profiler import MemoryProfileTimeline

    with torch.profiler.profile(
        activities=[torch.profiler.ProfilerActivity.CPU],
        profile_memory=True,
        record_shapes=True,
        with_stack=True,
    ) as prof:
        step()
    _, sizes = MemoryProfileTimeline(prof._memory_profile())._coalesce_timeline("cpu")
    return max(sum(categories) for categories in sizes) / 2**20


def git_commit() -> str:
    try:
        return subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
            cwd=Path(__file__).parent,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--batch-sizes", default="256,1024,4096")
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument(
        "--reference-repo",
        type=Path,
        default=None,
        help="local clone of salesforce/hierarchicalContrastiveLearning",
    )
    parser.add_argument(
        "--reference-max-batch",
        type=int,
        default=1024,
        help="the reference loops over samples in Python; skip it above this",
    )
    parser.add_argument(
        "--groups",
        default="core,masked",
        help="comma list of row groups: core (SupCon, HMLC, loop, reference), masked, memory, "
        "margin",
    )
    parser.add_argument("--memory", type=int, default=4096, help="K of the memory rows")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    parser.add_argument(
        "--cpu-time",
        action="store_true",
        help="time with the process's CPU time (a shared CPU machine, --threads 1)",
    )
    parser.add_argument("--no-peak-memory", action="store_true", help="skip peak memory")
    parser.add_argument("--output", type=Path, default=None)
    args = parser.parse_args()
    device = torch.device(args.device)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    groups = set(args.groups.split(","))
    unknown = groups - {"core", "masked", "memory", "margin"}
    if unknown:
        parser.error(f"unknown --groups {sorted(unknown)}; use core, masked, memory, margin")

    # SupCon and HMCE L=3 are the baselines of the summaries: always measured.
    candidates: list[tuple[str, int, LossCall]] = [("SupConLoss", 1, SupConLoss(temperature=0.1))]
    for levels in (2, 3, 4) if "core" in groups else (3,):
        candidates.append((f"HMLCLoss hmce L={levels}", levels, HMLCLoss("hmce", temperature=0.1)))
    if "core" in groups:
        # The worst-pair HiConE (the default until the anchor-mean bound), and the
        # group-sum form of the foundation issue's targets (and of hmc).
        if "masked" not in groups:  # the masked group measures it as its baseline
            candidates.append(("HMLCLoss hmce L=3 pair", 3, HMLCLoss("hmce", hce_form="pair")))
        for levels in (2, 3, 4):
            name = f"HMLCLoss hmce L={levels} batch_mean"
            candidates.append((name, levels, HMLCLoss("hmce", hce_form="batch_mean")))
        candidates.append(("per-level loop L=3", 3, per_level_loop_loss))
        if args.reference_repo is not None:
            candidates.append(("reference HMLC L=3", 3, load_reference(args.reference_repo)))
    if "masked" in groups:
        dim = args.dim
        # The default hce_form is the anchor-mean HiConE, "pair" the worst-pair one and
        # "batch_mean" the group-sum form.
        for form in ("anchor_mean", "pair", "batch_mean"):
            tag = "" if form == "anchor_mean" else f" {form}"
            if form != "anchor_mean":
                candidates.append((f"HMLCLoss hmce L=3{tag}", 3, HMLCLoss("hmce", hce_form=form)))
            candidates += [
                (f"GHMLCLoss L=3{tag}", 3, fitted_ghmlc(3, dim, form).to(device)),
                (
                    f"GHMLCLoss L=3{tag} partition",
                    3,
                    fitted_ghmlc(3, dim, form, nested=False).to(device),
                ),
                (
                    f"GHMLCLoss L=3{tag} general path",
                    3,
                    GeneralMaskedPath(fitted_ghmlc(3, dim, form).to(device)),
                ),
                (
                    f"AHMLCLoss L=3{tag}",
                    3,
                    AHMLCLoss(3, dim, hce_form=form, hierarchy_margin=0.0).to(device),
                ),
                (
                    f"AHMLCLoss L=3{tag} general path",
                    3,
                    GeneralMaskedPath(
                        AHMLCLoss(3, dim, hce_form=form, hierarchy_margin=0.0).to(device)
                    ),
                ),
            ]
    if "margin" in groups:
        margin = 0.2
        candidates.append(
            ("SupConLoss margin", 3, SupConLoss(temperature=0.1, hierarchy_margin=margin))
        )
        candidates.append(
            ("HMLCLoss hmce L=3 margin", 3, HMLCLoss("hmce", hierarchy_margin=margin))
        )
        if "masked" not in groups:  # their plain rows, measured by the masked group too
            candidates.append(
                ("GHMLCLoss L=3", 3, fitted_ghmlc(3, args.dim, "anchor_mean").to(device))
            )
            candidates.append(
                ("AHMLCLoss L=3", 3, AHMLCLoss(3, args.dim, hierarchy_margin=0.0).to(device))
            )
        ghmlc = fitted_ghmlc(3, args.dim, hierarchy_margin=margin)
        candidates.append(("GHMLCLoss L=3 margin", 3, ghmlc.to(device)))
        candidates.append(
            ("AHMLCLoss L=3 margin", 3, AHMLCLoss(3, args.dim, hierarchy_margin=margin).to(device))
        )
    if "memory" in groups:
        candidates.append(
            (
                f"HMLCLoss hmce L=3 memory K={args.memory}",
                3,
                WithMemory(args.memory, args.dim, 3, device),
            )
        )

    rows: list[dict[str, Any]] = []
    for batch_size in [int(b) for b in args.batch_sizes.split(",")]:
        for name, levels, fn in candidates:
            if name.startswith("reference") and batch_size > args.reference_max_batch:
                continue
            seconds, mib = measure(
                fn,
                batch_size,
                args.dim,
                levels,
                device,
                args.repeats,
                cpu_time=args.cpu_time,
                peak_memory=not args.no_peak_memory,
            )
            rows.append(
                {
                    "loss": name,
                    "levels": levels,
                    "batch_size": batch_size,
                    "ms": seconds * 1e3,
                    "peak_mib": mib,
                }
            )
            print(
                f"{name:24s} B={batch_size:5d}  {seconds * 1e3:9.2f} ms  {mib:9.1f} MiB", flush=True
            )

    by_key = {(r["loss"], r["batch_size"]): r for r in rows}
    print(
        f"\ndevice: {device} ({platform.processor() or platform.machine()}, "
        f"{torch.get_num_threads()} threads), torch {torch.__version__}, commit {git_commit()}\n"
    )
    print("| loss | batch | fwd+bwd ms | peak MiB | time vs SupCon | memory vs SupCon |")
    print("|---|---:|---:|---:|---:|---:|")
    for row in rows:
        base = by_key[("SupConLoss", row["batch_size"])]
        print(
            f"| {row['loss']} | {row['batch_size']} | {row['ms']:.2f} | {row['peak_mib']:.1f} | "
            f"{row['ms'] / base['ms']:.2f}x | {row['peak_mib'] / max(base['peak_mib'], 1e-9):.2f}x |"
        )
    masked = [row for row in rows if "HMLCLoss L=3" in row["loss"]]
    if masked:
        print("\n| masked loss | batch | fwd+bwd ms | time vs HMCE L=3 (same hce_form) |")
        print("|---|---:|---:|---:|")
        for row in masked:
            tag = next((f" {f}" for f in ("batch_mean", "pair") if f" {f}" in row["loss"]), "")
            base = by_key[(f"HMLCLoss hmce L=3{tag}", row["batch_size"])]
            print(
                f"| {row['loss']} | {row['batch_size']} | {row['ms']:.2f} | "
                f"{row['ms'] / base['ms']:.2f}x |"
            )
    if args.output is not None:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(
            json.dumps(
                {
                    "device": str(device),
                    "commit": git_commit(),
                    "torch": torch.__version__,
                    "threads": torch.get_num_threads(),
                    "clock": "process CPU time" if args.cpu_time else "wall clock",
                    "rows": rows,
                },
                indent=2,
            )
        )


if __name__ == "__main__":
    main()
