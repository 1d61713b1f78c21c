"""Forward + backward time and peak memory of the losses, against SupCon.

Groups of rows (``--groups``), at dim 128 and several batch sizes, on a 3-level tree
(20 > 100 > 500 classes; ``core`` also 2 and 4 levels):

- ``defaults``: every loss built exactly as a user builds it, with no options:
  ``SupConLoss()`` (on the finest labels), ``HMLCLoss("hmce")``, ``GHMLCLoss(3, 128)``
  and ``AHMLCLoss(3, 128)`` (their heads in training mode: the GMM statistics update and
  the attention MLPs are part of the step), and G-HMLC after its head's first fit (the
  masks of all but a run's first 100 steps; fitted before timing);
- ``core``: HMCE with 2, 3 and 4 levels, the batch-mean form, with the hierarchy margin
  0.2 (the README's first recommendation), HMCE written as a plain
  per-level loop, and optionally the public reference implementation of Zhang et al.,
  loaded at run time from a local clone (``--reference-repo``; nothing of it is part of
  this package);
- ``memory``: HMCE with ``K`` extra contrast rows (``--memory``);
- ``unchecked``: the defaults with ``check_values=False`` (no value checks; eagerly they
  still read what picks their shapes);
- ``compiled``: the defaults under ``torch.compile`` as users and the suite compile them,
  value checks kept (the graph breaks where they read a value; the G-HMLC head's training
  step runs inside the graph as one opaque op).

Every row is reported against SupCon measured in the same process. Peak memory on the
CPU is the peak of the allocated total during one forward and backward, replayed from
``torch.profiler``'s memory timeline; on CUDA it is ``torch.cuda.max_memory_allocated``
above the inputs.

Usage:
    python benchmarks/speed/loss_speed.py --groups defaults --batch-sizes 1024,2048 --threads 1
    python benchmarks/speed/loss_speed.py --groups core --reference-repo /path/to/clone
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

LossCall = Callable[[Tensor, Tensor, Tensor], Tensor]
GROUPS = ("defaults", "core", "memory", "unchecked", "compiled")


def per_level_loop_loss(
    out0: Tensor, out1: Tensor, labels: Tensor, temperature: float = 0.1
) -> Tensor:
    """HMCE (batch-mean constraint) the straightforward way: a positive mask and a SupCon
    pass per level."""
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


def finest(loss_fn: LossCall) -> LossCall:
    """SupCon on the finest level's labels, as a user with label paths would call it."""

    def call(out0: Tensor, out1: Tensor, labels: Tensor) -> Tensor:
        return loss_fn(out0, out1, labels[:, -1])

    return call


def default_losses(dim: int, device: torch.device, check_values: bool = True) -> list[Any]:
    """``(name, levels, loss)`` of the four defaults, as users construct them."""
    return [
        ("SupConLoss()", 3, finest(SupConLoss(check_values=check_values))),
        ('HMLCLoss("hmce")', 3, HMLCLoss("hmce", check_values=check_values)),
        (f"GHMLCLoss(3, {dim})", 3, GHMLCLoss(3, dim, check_values=check_values).to(device)),
        (f"AHMLCLoss(3, {dim})", 3, AHMLCLoss(3, dim, check_values=check_values).to(device)),
        # The GMM head keeps all-ones masks for its first 100 steps; a run spends nearly all
        # its steps after the first fit, on nested hard masks.
        (f"GHMLCLoss(3, {dim}) after its first fit", 3, fitted_ghmlc(dim, device, check_values)),
    ]


def fitted_ghmlc(dim: int, device: torch.device, check_values: bool) -> GHMLCLoss:
    """``GHMLCLoss(3, dim)`` whose head has made its first fit (eagerly, here), as in all but
    a run's first 100 steps: nested hard masks. No refit follows while it is timed."""
    loss_fn = GHMLCLoss(3, dim, check_values=check_values, warmup_steps=1, refit_every=10**9)
    loss_fn.to(device)
    generator = torch.Generator().manual_seed(1)
    labels = tree_labels(1024, 3, generator).to(device)
    for _ in range(2):  # step 1 gathers statistics, step 2 fits the masks
        z = torch.randn(1024, dim, generator=generator).to(device)
        loss_fn(z, z + 0.1 * torch.randn_like(z), labels)
    return loss_fn


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--batch-sizes", default="256,1024,2048")
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--groups", default="defaults", help=f"comma list of {GROUPS}")
    parser.add_argument("--reference-repo", type=Path, default=None)
    parser.add_argument(
        "--reference-max-batch",
        type=int,
        default=1024,
        help="the reference loops over samples in Python; skip it above this",
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
    if groups - set(GROUPS):
        parser.error(f"unknown --groups {sorted(groups - set(GROUPS))}; use {GROUPS}")

    # SupCon is every row's baseline: always measured, first.
    candidates: list[tuple[str, int, LossCall]] = default_losses(args.dim, device)
    if "defaults" not in groups:
        candidates = candidates[:1]
    if "core" in groups:
        for levels in (2, 3, 4):
            candidates.append((f"HMLCLoss hmce L={levels}", levels, HMLCLoss("hmce")))
        candidates.append(
            ('HMLCLoss("hmce", hce_form="batch_mean")', 3, HMLCLoss("hmce", hce_form="batch_mean"))
        )
        # The README's first recommendation.
        margin = 'HMLCLoss("hmce", hierarchy_margin=0.2)'
        candidates.append((margin, 3, HMLCLoss("hmce", hierarchy_margin=0.2)))
        candidates.append(("per-level loop (hmce, batch mean)", 3, per_level_loop_loss))
        if args.reference_repo is not None:
            candidates.append(("reference HMLC (hmce)", 3, load_reference(args.reference_repo)))
    if "memory" in groups:
        name = f"HMLCLoss hmce + memory K={args.memory}"
        candidates.append((name, 3, WithMemory(args.memory, args.dim, 3, device)))
    if "unchecked" in groups:
        for name, levels, loss_fn in default_losses(args.dim, device, check_values=False):
            candidates.append((f"{name}, check_values=False", levels, loss_fn))
    if "compiled" in groups:
        for name, levels, loss_fn in default_losses(args.dim, device):
            candidates.append((f"compiled {name}", levels, torch.compile(loss_fn)))

    rows: list[dict[str, Any]] = []
    batch_sizes = [int(b) for b in args.batch_sizes.split(",")]
    # The eager rows of every batch size first: compiling is slow, and a run cut short
    # (gpu_check.sh's time limits) keeps every row measured so far in --output.
    order = [
        (b, c)
        for compiled in (False, True)
        for b in batch_sizes
        for c in candidates
        if c[0].startswith("compiled ") == compiled
    ]
    for batch_size, (name, levels, loss_fn) in order:
        if name.startswith("reference") and batch_size > args.reference_max_batch:
            continue
        seconds, peak = measure(
            loss_fn,
            batch_size,
            args.dim,
            levels,
            device,
            args.repeats,
            cpu_time=args.cpu_time,
            peak_memory=not args.no_peak_memory,
        )
        rows.append({"loss": name, "batch_size": batch_size, "ms": seconds * 1e3, "peak_mib": peak})
        print(f"{name:48s} batch {batch_size:5d}: {seconds * 1e3:9.1f} ms, {peak:8.1f} MiB")
        save(args.output, device, args.dim, rows)
    baseline = {r["batch_size"]: r for r in rows if r["loss"] == "SupConLoss()"}
    threads = torch.get_num_threads()
    print(
        f"\ncommit {git_commit()}, {platform.processor() or platform.machine()}, "
        f"{device}, {threads} thread(s), torch {torch.__version__}, dim {args.dim}"
    )
    print("| loss | batch | fwd+bwd ms | peak MiB | time vs SupCon | memory vs SupCon |")
    print("|---|---:|---:|---:|---:|---:|")
    for row in rows:
        base = baseline[row["batch_size"]]
        row["time_vs_supcon"] = row["ms"] / base["ms"]
        row["memory_vs_supcon"] = row["peak_mib"] / base["peak_mib"]
        print(
            f"| {row['loss']} | {row['batch_size']} | {row['ms']:.1f} | {row['peak_mib']:.0f} | "
            f"{row['time_vs_supcon']:.2f}x | {row['memory_vs_supcon']:.2f}x |"
        )
    save(args.output, device, args.dim, rows)


def save(output: Path | None, device: torch.device, dim: int, rows: list[dict[str, Any]]) -> None:
    """The rows so far, with the machine, as JSON (nothing without ``--output``)."""
    if output is None:
        return
    output.parent.mkdir(parents=True, exist_ok=True)
    record = {
        "commit": git_commit(),
        "machine": platform.processor() or platform.machine(),
        "device": str(device),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "dim": dim,
        "rows": rows,
    }
    output.write_text(json.dumps(record, indent=2))


if __name__ == "__main__":
    main()
