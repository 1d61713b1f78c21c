"""Run records: the per-epoch training history and totals, and the environment of a run.

:class:`RunRecorder` keeps the loss history, wall time and samples of a run in its
checkpoints (so that a resumed run reports all of its epochs) together with the run's
settings (``config``), against which a resume is checked. ``environment_info`` records
package versions, Python, git commit and machine.
"""

from __future__ import annotations

import json
import os
import platform
import resource
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from run_files import write_text_atomic

REPO_ROOT = Path(__file__).resolve().parents[2]


class RunRecorder(pl.Callback):
    """Per-epoch loss history, training time and samples (all kept in checkpoints).

    Rank 0 writes ``train_stats.json`` at the end of training, which the process that
    evaluates reads back (so that it works with ``ddp_spawn`` too). Times and samples
    add up over resumed invocations. ``images_per_second`` counts source images (each
    gives two augmented views) per second of the training epochs (checkpointing
    excluded), over all devices.
    """

    def __init__(
        self, run_dir: Path, global_batch_size: int, config: dict[str, Any] | None = None
    ) -> None:
        self.run_dir = run_dir
        self.global_batch_size = global_batch_size
        # The settings that shape the result; a resume must match them (run.py).
        self.config = dict(config or {})
        self.history: dict[str, list[float]] = {}
        self.totals = {"wall_seconds": 0.0, "epoch_seconds": 0.0, "samples": 0}
        self._previous = dict(self.totals)
        self._start = self._epoch_start = 0.0
        self._start_step = 0
        self._trainer: pl.Trainer | None = None
        self._in_epoch = False
        self._rss_reset = False

    @property
    def state_key(self) -> str:
        """One recorder per trainer."""
        return "RunRecorder"

    def state_dict(self) -> dict[str, Any]:
        """The loss history, totals and settings, so that a resumed run reports all epochs.

        The totals are those of this moment: a checkpoint written inside an epoch (every
        N steps, or on SIGTERM) counts its steps and time so far.
        """
        totals = dict(self.totals)
        if self._trainer is not None:
            now = time.perf_counter()
            steps = self._trainer.global_step - self._start_step
            totals["wall_seconds"] = self._previous["wall_seconds"] + now - self._start
            totals["samples"] = int(self._previous["samples"]) + steps * self.global_batch_size
            if self._in_epoch:
                totals["epoch_seconds"] += now - self._epoch_start
        return {"history": self.history, "totals": totals, "config": self.config}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restores the loss history and totals."""
        self.history = {k: list(v) for k, v in state_dict.get("history", {}).items()}
        self.totals.update(state_dict.get("totals", {}))

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Starts the clocks and resets the peak-memory counter (CUDA, or the process's
        peak RSS where Linux allows it), so that each run of a suite reports its own."""
        if pl_module.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(pl_module.device)
        else:
            self._rss_reset = reset_peak_rss()
        self._previous = dict(self.totals)
        self._start = time.perf_counter()
        self._start_step = trainer.global_step
        self._trainer = trainer

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Times the epoch (excluding checkpointing at its end)."""
        self._synchronize(pl_module)
        self._epoch_start = time.perf_counter()
        self._in_epoch = True

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Records the epoch's mean logged values (``train/*``) and the totals."""
        self._synchronize(pl_module)
        now = time.perf_counter()
        self.totals["epoch_seconds"] += now - self._epoch_start
        self._in_epoch = False
        self._update_totals(trainer, now)
        metrics = trainer.callback_metrics
        for key, value in sorted(metrics.items()):
            # A value logged on step and epoch appears as key, key_step and key_epoch.
            if not key.startswith("train/") or key.endswith("_step") or f"{key}_epoch" in metrics:
                continue
            self.history.setdefault(key.removesuffix("_epoch"), []).append(float(value))

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Writes ``train_stats.json`` (rank 0)."""
        self._synchronize(pl_module)
        self._update_totals(trainer, time.perf_counter())
        if pl_module.device.type == "cuda":
            peak_mb = torch.cuda.max_memory_allocated(pl_module.device) / 2**20
            peak_kind = "cuda_max_memory_allocated"
        else:
            peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
            # Since this run's start, or (no reset possible) since the process's start.
            peak_kind = "process_max_rss" if self._rss_reset else "process_max_rss_since_start"
        seconds = self.totals["epoch_seconds"]
        stats = {
            **self.totals,
            "images_per_second": self.totals["samples"] / seconds if seconds else 0.0,
            "peak_memory_mb": peak_mb,
            "peak_memory_kind": peak_kind,
            "epochs_completed": trainer.current_epoch,
            "global_step": trainer.global_step,
            "world_size": trainer.world_size,
            "history": self.history,
        }
        if trainer.is_global_zero:
            write_json(self.run_dir / "train_stats.json", stats)

    def _update_totals(self, trainer: pl.Trainer, now: float) -> None:
        steps = trainer.global_step - self._start_step
        self.totals["wall_seconds"] = self._previous["wall_seconds"] + now - self._start
        self.totals["samples"] = int(self._previous["samples"]) + steps * self.global_batch_size

    @staticmethod
    def _synchronize(pl_module: pl.LightningModule) -> None:
        if pl_module.device.type == "cuda":
            torch.cuda.synchronize(pl_module.device)


def reset_peak_rss() -> bool:
    """Resets the process's peak resident set size (``resource.getrusage``'s
    ``ru_maxrss``), so that a later reading is the peak since now; False where the kernel
    does not allow it (not Linux, or ``/proc/self/clear_refs`` not writable).

    Linux also keeps the peak of the process at the end of each of its threads apart
    from the one this resets: a thread that ended after an earlier, higher peak keeps that
    peak in the reading (the suite's own threads, torch's pool, live as long as the
    process).
    """
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")  # 5: reset the peak RSS (Linux >= 4.0)
    except OSError:
        return False
    return True


def environment_info(seed: int) -> dict[str, Any]:
    """Package versions, Python, seed, git commit and machine of this run."""
    versions: dict[str, str | None] = {}
    for package in ("torch", "torchvision", "lightly", "timm", "pytorch_lightning", "lightly_hmlc"):
        try:
            versions[package] = metadata.version(package.replace("_", "-"))
        except metadata.PackageNotFoundError:
            module = sys.modules.get(package)
            versions[package] = getattr(module, "__version__", None)
    machine: dict[str, Any] = {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "cpu_affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "torch_num_threads": torch.get_num_threads(),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "gpu_count": torch.cuda.device_count(),
        "cuda": torch.version.cuda,
    }
    return {
        "packages": versions,
        "python": platform.python_version(),
        "seed": seed,
        "git_commit": _git("rev-parse", "HEAD"),
        "git_dirty": None if (status := _git("status", "--porcelain")) is None else bool(status),
        "machine": machine,
    }


def _git(*command: str) -> str | None:
    try:
        out = subprocess.run(
            ["git", *command], cwd=REPO_ROOT, capture_output=True, text=True, timeout=10
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def write_json(path: Path, data: Any) -> None:
    """Writes ``data`` as indented, sorted JSON (creating the folder), atomically."""
    write_text_atomic(path, json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")
