"""Training throughput of the hierarchical methods against SimCLR on the same backbone.

One training step is what the suite (``benchmarks/main.py``) runs per batch: both views through the backbone,
the projection head, the loss (with its mask head), backward and an SGD step. The
batches are fixed random tensors, so data loading is excluded and every method sees
the same work; only the objective differs. Each method runs ``--warmup`` untimed steps,
then the methods take turns for ``--rounds`` rounds of ``--steps`` timed steps (turns
spread the noise of a shared machine evenly); a method's throughput is the median over
its rounds. CUDA is synchronised before every clock reading.

G-HMLC refits its Gaussian mixture every ``refit_every`` steps (the head's default is
100). The timed steps contain no refit; the refit is timed on its own and its cost per
step (``refit / refit_every``) is added in the row ``g-hmlc (+refit)``.

``images/s`` counts source images per second (each step processes two views per
image). The target is a ratio of at least 0.95 against ``simclr``.

Usage::

    python benchmarks/speed/throughput.py --backbone resnet18_cifar --batch-size 64 --device cpu
    python benchmarks/speed/throughput.py --backbone resnet50_cifar --batch-size 512 \\
        --device cuda --precision bf16 --levels 20,100
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Sequence
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

# The suite's modules (``benchmarks/suite``), and this checkout's package.
_BENCHMARKS = Path(__file__).resolve().parents[1]
for _folder in (_BENCHMARKS.parent, _BENCHMARKS / "suite"):
    if str(_folder) not in sys.path:
        sys.path.insert(0, str(_folder))
import methods  # noqa: E402

BASELINE = "simclr"
DEFAULT_METHODS = ("simclr", "hmce", "g-hmlc", "a-hmlc")
_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def synthetic_batch(
    batch_size: int, levels: Sequence[int], image_size: int, in_chans: int, seed: int = 0
) -> tuple[list[Tensor], Tensor]:
    """Two random views and random label paths of a balanced tree with ``levels`` classes.

    Examples:
        >>> views, paths = synthetic_batch(4, [2, 6], 8, 3)
        >>> views[0].shape, paths.shape
        (torch.Size([4, 3, 8, 8]), torch.Size([4, 2]))
        >>> bool((paths[:, 0] == paths[:, 1] * 2 // 6).all())
        True
    """
    generator = torch.Generator().manual_seed(seed)
    fine = torch.randint(0, levels[-1], (batch_size,), generator=generator)
    paths = torch.stack([fine * n // levels[-1] for n in levels], dim=1)
    shape = (batch_size, in_chans, image_size, image_size)
    views = [torch.randn(shape, generator=generator) for _ in range(2)]
    return views, paths


class StepRunner:
    """One method's model, optimiser and fixed batch; :meth:`step` trains one step."""

    def __init__(self, name: str, args: argparse.Namespace, device: torch.device) -> None:
        levels = [int(n) for n in args.levels.split(",")]
        self.name = name
        self.device = device
        self.model = methods.create_method(
            name,
            num_classes_per_level=levels,
            backbone=args.backbone,
            img_size=args.image_size,
            temperature=0.1,
            mask_warmup_steps=args.warmup,  # masks are fitted before the timed steps
            mask_refit_every=args.refit_every,
            # The baselines build no registered loss, so they take no memory bank.
            **({"memory_bank_size": args.memory_bank} if name not in methods.BASELINES else {}),
        ).to(device)
        self.model.train()
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=1e-3, momentum=0.9)
        views, paths = synthetic_batch(args.batch_size, levels, args.image_size, 3)
        self.batch = ([v.to(device) for v in views], paths.to(device))
        bank = getattr(self.model, "memory_bank", None)
        if bank is not None:  # timed steps see a full queue, as after K / B training steps
            rows = torch.nn.functional.normalize(torch.randn(bank.size, bank.dim), dim=1)
            bank(
                rows.to(device),
                paths.repeat(bank.size // len(paths) + 1, 1)[: bank.size].to(device),
            )
        self.dtype = _DTYPES.get(args.precision)
        self.scaler = torch.amp.GradScaler(device.type, enabled=args.precision == "fp16")

    def _autocast(self) -> AbstractContextManager[Any]:
        if self.dtype is None:
            return nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.dtype)

    def step(self) -> None:
        """Forward, loss, backward and optimiser step."""
        self.optimizer.zero_grad(set_to_none=True)
        with self._autocast():
            loss, _ = self.model.shared_step(self.batch)
        self.scaler.scale(loss).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()

    def time_steps(self, steps: int) -> float:
        """Seconds per step over ``steps`` synchronised steps."""
        _synchronize(self.device)
        begin = time.perf_counter()
        for _ in range(steps):
            self.step()
        _synchronize(self.device)
        return (time.perf_counter() - begin) / steps

    def time_refit(self, repeats: int = 3) -> float | None:
        """Seconds of one G-HMLC mask refit (``None`` for other methods)."""
        head = getattr(self.model, "mask_head", None)
        if head is None or not hasattr(head, "refit"):
            return None
        times = []
        for _ in range(repeats):
            _synchronize(self.device)
            begin = time.perf_counter()
            head.refit()
            _synchronize(self.device)
            times.append(time.perf_counter() - begin)
        return statistics.median(times)


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(args: argparse.Namespace) -> list[dict[str, Any]]:
    """Runs the benchmark; one row per method (and one for G-HMLC with refits)."""
    device = torch.device(args.device)
    names = [n.strip() for n in args.methods.split(",") if n.strip()]
    known = methods.method_names()
    unknown = [n for n in names if n not in known]
    if unknown:
        raise ValueError(f"Unknown method(s) {unknown}; choose from {known}.")
    if BASELINE not in names:
        names.insert(0, BASELINE)
    torch.manual_seed(0)
    runners = [StepRunner(name, args, device) for name in names]
    for runner in runners:
        for _ in range(args.warmup):
            runner.step()
    seconds: dict[str, list[float]] = {name: [] for name in names}
    for _ in range(args.rounds):
        for runner in runners:
            seconds[runner.name].append(runner.time_steps(args.steps))
    rows = []
    base = statistics.median(seconds[BASELINE])
    for runner in runners:
        step = statistics.median(seconds[runner.name])
        rows.append(_row(runner.name, step, base, args.batch_size))
        refit = runner.time_refit()
        if refit is not None:
            amortised = step + refit / args.refit_every
            row = _row(f"{runner.name} (+refit)", amortised, base, args.batch_size)
            row["note"] = f"refit {refit * 1e3:.1f} ms every {args.refit_every} steps"
            rows.append(row)
    return rows


def _row(name: str, step: float, base: float, batch_size: int) -> dict[str, Any]:
    return {
        "method": name,
        "ms_per_step": step * 1e3,
        "images_per_second": batch_size / step,
        "ratio": base / step,
        "note": "",
    }


def format_rows(rows: list[dict[str, Any]]) -> str:
    """The markdown table of :func:`measure`'s rows."""
    lines = [
        f"| method | images/s | ms/step | vs {BASELINE} | note |",
        "|---|---|---|---|---|",
    ]
    for row in rows:
        lines.append(
            f"| {row['method']} | {row['images_per_second']:.1f} | {row['ms_per_step']:.1f} "
            f"| {row['ratio']:.3f}x | {row['note']} |"
        )
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    """The command line."""
    p = argparse.ArgumentParser(description="Training throughput against SimCLR.")
    p.add_argument("--methods", default=",".join(DEFAULT_METHODS))
    p.add_argument("--backbone", default="resnet18_cifar")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--image-size", type=int, default=32)
    p.add_argument("--levels", default="20,100", help="classes per level, coarse to fine")
    p.add_argument("--precision", default="32", choices=["32", "bf16", "fp16"])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps per method")
    p.add_argument("--steps", type=int, default=3, help="timed steps per round")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--refit-every", type=int, default=100, help="G-HMLC refit interval")
    p.add_argument(
        "--memory-bank", type=int, default=0, help="queue of K rows for every non-baseline method"
    )
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Prints the throughput table."""
    args = build_parser().parse_args(argv)
    rows = measure(args)
    device = torch.cuda.get_device_name(0) if args.device.startswith("cuda") else "CPU"
    print(
        f"backbone {args.backbone}, batch {args.batch_size}, {args.image_size}px, levels "
        f"{args.levels}, memory bank {args.memory_bank}, precision {args.precision}, {device}, "
        f"{torch.get_num_threads()} "
        f"threads, median of {args.rounds} rounds x {args.steps} steps\n"
    )
    print(format_rows(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
