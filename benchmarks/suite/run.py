"""One run of the suite: train one method with one seed, checkpoint, resume, evaluate.

Checkpoints. :class:`LastCheckpoint` writes ``checkpoints/last.ckpt`` at the end of
every epoch, every ``--checkpoint-every-n-steps`` steps, at the end of training and
when the run is stopped by SIGTERM or SIGINT. Each write goes to a temporary file that
then replaces ``last.ckpt`` (``os.replace``), so a run killed at any moment, even with
SIGKILL during a write, leaves the previous complete checkpoint. The training loader
is resumable (``datasets.ResumableLoader``): a run resumed from a checkpoint written
inside an epoch continues with the next batch, so it trains on the batches of an
uninterrupted run. Checkpoints hold only tensors and plain values and are loaded
without pickle (``weights_only=True``, by :func:`read_checkpoint` and by Lightning), so
a checkpoint from elsewhere cannot run code; one that needs pickle is refused.

Run folder. A run holds the folder's lock (``run_files.RunFolderLock``, ``run.lock``)
from before it reads anything there until it ends, so that a second run started into
the same folder is refused instead of mixing its records in. Records are written
atomically (``run_files.write_text_atomic``).

Signals. Lightning's SIGTERM handler (``trainer.received_sigterm``) stops the run at
the end of the current batch by raising ``SIGTERMException``; SIGINT (Ctrl+C) is
routed to the same path, so the weights are never saved in the middle of a step. The
run then saves its checkpoint and raises :class:`RunInterrupted`; ``main.py`` prints
one line saying how to resume and exits with 143 (SIGTERM) or 130 (SIGINT). A second
Ctrl+C interrupts at once.

Resume checks. A resumed run must have the settings of the run that wrote the
checkpoint (``RunRecorder`` keeps them in every checkpoint); only the fields of
``NO_EFFECT_FIELDS`` may differ. A setting of ``ADDED_FIELDS`` that an older checkpoint
did not record counts as off there.
"""

from __future__ import annotations

import argparse
import hashlib
import inspect
import json
import logging
import os
import pickle
import signal
import sys
import time
import warnings
from collections.abc import Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any, Literal

import methods
import pytorch_lightning as pl
import torch
from datasets import DatasetBundle, SuiteDataModule, UserError
from evaluate import (
    evaluate_features,
    extract_features,
    format_identification_matrix,
    format_metrics_table,
    identification_matrix,
    identification_metrics,
    plot_embeddings,
    plot_identification,
    plot_training_curves,
    split_levels,
)
from lightning_fabric.utilities.exceptions import MisconfigurationException
from pytorch_lightning.loggers import CSVLogger, Logger, TensorBoardLogger
from pytorch_lightning.utilities.exceptions import SIGTERMException
from records import RunRecorder, environment_info, write_json
from run_files import RunFolderLock, read_json_record, write_text_atomic
from torch import nn

# Settings that cannot change what a run computes: a resume may change them. Paths
# (the hierarchy file's content is compared through ``hierarchy_digest``), workers,
# output, the length of the run (--epochs extends it: the cosine schedule then runs
# to the new end from the resume point on), and the selection of runs.
NO_EFFECT_FIELDS = frozenset(
    {
        "epochs",
        "output_dir",
        "data_dir",
        "hierarchy",
        "resume",
        "overwrite",
        "num_workers",
        "threads",
        "progress_bar",
        "plots",
        "traceback",
        # Compiling changes how, not what, a run computes (up to rounding).
        "compile",
        "max_time",
        "checkpoint_every_n_steps",
        "eval_batch_size",
        "list_methods",
        "methods",
        "seeds",
        "preset",
        # A variant's name names its folder; its options are compared as loss/head/flags.
        "variant",
        "baseline",
        "logger",
        # The number of processes and the device type are compared instead.
        "accelerator",
        "devices",
        "num_nodes",
        "strategy",
    }
)

# Settings added after runs were first recorded, with the value that keeps them off: a
# checkpoint whose recorded settings lack one was trained with that value, so that a run
# of an older version resumes unless the flag is given.
ADDED_FIELDS: dict[str, Any] = {
    "memory_bank": 0,
    "momentum_encoder": None,
    "sampler_option": [],
}
# Settings since removed, with the value that runs now have: a checkpoint that recorded
# that value resumes.
REMOVED_FIELDS: dict[str, Any] = {"mask_placement": "projection"}

_EXIT_CODES = {"SIGTERM": 128 + signal.SIGTERM, "SIGINT": 128 + signal.SIGINT}


@dataclass
class RunResult:
    """What one (method, seed) run produced (rank 0 only)."""

    method: str
    seed: int
    run_dir: Path
    metrics: dict[str, Any]


class RunInterrupted(Exception):
    """A run stopped by SIGTERM or SIGINT after saving its checkpoint."""

    def __init__(self, signal_name: str, checkpoint: Path, step: int) -> None:
        super().__init__(f"{signal_name} at step {step}; checkpoint {checkpoint}")
        self.signal_name = signal_name
        self.checkpoint = checkpoint
        self.step = step

    @property
    def exit_code(self) -> int:
        """143 for SIGTERM, 130 for SIGINT (128 + the signal number, as a shell reports)."""
        return _EXIT_CODES.get(self.signal_name, 1)


class LastCheckpoint(pl.Callback):
    """Keeps ``last.ckpt`` current: every epoch, every N steps, at the end and on signals.

    Args:
        path: The checkpoint file.
        every_n_steps: Also write every this many optimizer steps (``None``: only at
            epoch ends). The write happens at the start of the next batch, when the
            step is complete in every counter of the loop.
    """

    def __init__(self, path: Path, every_n_steps: int | None = None) -> None:
        self.path = path
        self.every_n_steps = every_n_steps
        self.signal_name: str | None = None
        self._saved_step = -1
        self._previous_sigint: Any = None

    def save(self, trainer: pl.Trainer) -> None:
        """Writes the checkpoint to a temporary file, then replaces ``path`` with it."""
        if trainer.global_step == self._saved_step:
            return
        partial = self.path.with_name(self.path.name + ".partial")
        # Every rank calls it, rank 0 writes; the full state (not only the weights).
        trainer.save_checkpoint(partial, weights_only=False)
        if trainer.is_global_zero:
            os.replace(partial, self.path)
        trainer.strategy.barrier("LastCheckpoint.save")
        self._saved_step = trainer.global_step

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Routes SIGINT to Lightning's SIGTERM path: stop after the current batch."""
        self._saved_step = trainer.global_step  # the resumed checkpoint is on disk
        self._previous_sigint = signal.signal(signal.SIGINT, self._on_sigint)

    def _on_sigint(self, signum: int, frame: FrameType | None) -> None:
        self.signal_name = "SIGINT"
        signal.signal(signal.SIGINT, signal.default_int_handler)  # a second Ctrl+C: now
        signal.raise_signal(signal.SIGTERM)

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        """Restores the SIGINT handler."""
        if self._previous_sigint is not None:
            signal.signal(signal.SIGINT, self._previous_sigint)
            self._previous_sigint = None

    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        """Writes the checkpoint of every N-th completed step."""
        step = trainer.global_step
        if self.every_n_steps and step > 0 and step % self.every_n_steps == 0:
            self.save(trainer)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Writes the checkpoint of every epoch (after the recorder has added the epoch)."""
        self.save(trainer)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Writes the final state (a run stopped by --max-time included)."""
        self.save(trainer)

    def on_exception(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException
    ) -> None:
        """On SIGTERM/SIGINT (raised between batches) saves the state; not on errors."""
        if isinstance(exception, SIGTERMException):
            self.signal_name = self.signal_name or "SIGTERM"
            self.save(trainer)


class EpochLines(pl.Callback):
    """One line per epoch (for logs and non-terminals, instead of progress-bar redraws)."""

    def __init__(self, label: str) -> None:
        self.label = label
        self._start = 0.0

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Starts the epoch's clock."""
        self._start = time.perf_counter()

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Prints ``<run> epoch e/E: train/loss ... (s)`` on rank 0."""
        if not trainer.is_global_zero:
            return
        metrics = trainer.callback_metrics
        loss = metrics.get("train/loss_epoch", metrics.get("train/loss"))
        shown = f"loss {float(loss):.4f}, " if loss is not None else ""
        print(
            f"{self.label} epoch {trainer.current_epoch + 1}/{trainer.max_epochs}: {shown}"
            f"step {trainer.global_step}, {time.perf_counter() - self._start:.1f} s",
            flush=True,
        )


class _DropLitLoggerTip(logging.Filter):
    """Drops Lightning's advert for its cloud logger (issue 10: quiet output)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "litlogger" not in record.getMessage()


# Lightning's loggers (the standalone and the unified package's names). Their INFO lines
# are banners ("GPU available: ...", "TPU available: ...", "LOCAL_RANK: ...", "Loading
# `train_dataloader` to estimate ...", "`Trainer.fit` stopped: ..."); warnings go through
# the warnings module and errors are raised, so both stay.
_LIGHTNING_LOGGERS = (
    "pytorch_lightning",
    "lightning.pytorch",
    "lightning_fabric",
    "lightning.fabric",
)


def quiet_lightning() -> None:
    """No Lightning banner or advert and no deprecation warnings of the dependencies in a
    run's output; Lightning's warnings and errors stay."""
    for name in _LIGHTNING_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)
    for name in ("pytorch_lightning.utilities.rank_zero", "lightning.pytorch.utilities.rank_zero"):
        logger = logging.getLogger(name)
        logger.setLevel(logging.WARNING)
        if not any(isinstance(f, _DropLitLoggerTip) for f in logger.filters):
            logger.addFilter(_DropLitLoggerTip())
    # Lightning 2.6 uses torch's LeafSpec, which torch 2.9 deprecates (not our code).
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)")
    warnings.filterwarnings("ignore", category=DeprecationWarning, module="pytorch_lightning")
    warnings.filterwarnings("ignore", category=DeprecationWarning, module="lightning_fabric")


def show_progress_bar(args: argparse.Namespace) -> bool:
    """``--progress-bar`` / ``--no-progress-bar``; by default a bar on a terminal only."""
    if args.progress_bar is None:
        return sys.stdout.isatty()
    return bool(args.progress_bar)


def run_label(args: argparse.Namespace, method: str) -> str:
    """The run's name: the variant's name or the method, and ``--run-name`` as a suffix
    (``hmce-tau0.2``)."""
    name = getattr(args, "variant", None) or method
    return name if not args.run_name else f"{name}-{args.run_name}"


def run_dir_of(args: argparse.Namespace, method: str, seed: int) -> Path:
    """``<output-dir>/<dataset>/<method>[-<run-name>]/seed<k>``."""
    return Path(args.output_dir) / args.dataset / run_label(args, method) / f"seed{seed}"


def result_config(
    args: argparse.Namespace, method: str, seed: int, world: int, device: str, bundle: DatasetBundle
) -> dict[str, Any]:
    """The settings that shape a run's result (all but ``NO_EFFECT_FIELDS``)."""
    config = {k: v for k, v in sorted(vars(args).items()) if k not in NO_EFFECT_FIELDS}
    digest = hashlib.sha256(bundle.hierarchy.to_json().encode()).hexdigest()[:16]
    config.update(
        method=method, seed=seed, world_size=world, device_type=device, hierarchy_digest=digest
    )
    return config


def check_resume_config(saved: dict[str, Any], current: dict[str, Any], source: str) -> None:
    """Refuses a resume whose settings differ, naming each field with old and new value."""
    missing = object()
    changed = []
    for key in sorted(set(saved) | set(current)):
        old = saved.get(key, ADDED_FIELDS.get(key, missing))
        new = current.get(key, REMOVED_FIELDS.get(key, missing))
        if old != new:
            name = f"--{key.replace('_', '-')}" if key in current or key in saved else key
            show = [("(unset)" if v is missing else json.dumps(v, default=str)) for v in (old, new)]
            changed.append(f"{name} {show[0]} -> {show[1]}")
    if changed:
        allowed = ", ".join(f"--{k.replace('_', '-')}" for k in sorted(NO_EFFECT_FIELDS))
        raise UserError(
            f"{source} was trained with other settings: {'; '.join(changed)}. Resume with the "
            "original values, or start afresh with --overwrite or another --output-dir "
            f"(a resume may change only {allowed})."
        )


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """The checkpoint at ``path``, loaded without pickle (``weights_only=True``).

    The suite's checkpoints hold only tensors and plain values, so they never need
    pickle; a file that does could run any code while it loads, and is refused.

    Raises:
        UserError: If the file needs pickle, is truncated or is not a checkpoint.
    """
    try:
        with warnings.catch_warnings():  # torch warns about foreign pickle protocols
            warnings.simplefilter("ignore", UserWarning)
            checkpoint: dict[str, Any] = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise
    except pickle.UnpicklingError as error:
        raise UserError(
            f"Refused checkpoint {str(path)!r}: it holds Python objects that only pickle can "
            f"load, and loading them could run any code ({_unpickling_reason(error)}). This "
            "suite's checkpoints never need pickle: pass one written by benchmarks/main.py, "
            "or start the run over with --overwrite."
        ) from error
    except Exception as error:  # truncated (EOFError, RuntimeError) or not a checkpoint
        raise UserError(
            f"Cannot read checkpoint {str(path)!r} ({type(error).__name__}: {error}); it is "
            "truncated or not a checkpoint. Delete it to start the run over, or pass --overwrite."
        ) from error
    return checkpoint


def _unpickling_reason(error: pickle.UnpicklingError) -> str:
    """torch's own cause (e.g. ``unsupported GLOBAL posix.system``) from its long message."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    causes = [line for line in lines if "unsupported" in line.lower()]
    return (causes or lines or ["unknown cause"])[0].rstrip(".")


def _resume_checkpoint(args: argparse.Namespace, run_dir: Path) -> str | None:
    if args.resume is None:
        return None
    if args.resume == "auto":
        last = run_dir / "checkpoints" / "last.ckpt"
        if last.is_file():
            return str(last)
        if (run_dir / "checkpoints").exists():  # killed before its first checkpoint
            print(f"{run_dir}: no checkpoint yet, the run starts over.")
        return None
    return str(args.resume)


def run_one(
    args: argparse.Namespace,
    bundle: DatasetBundle,
    method: str,
    seed: int,
    extra_callbacks: Sequence[pl.Callback] = (),
) -> RunResult | None:
    """Trains ``method`` with ``seed``, evaluates it and writes the run's records.

    Returns ``None`` on ranks other than 0.

    Raises:
        UserError: For bad settings, data or checkpoints (one line, exit code 2).
        RunInterrupted: If SIGTERM or SIGINT stopped the run (after saving it).
    """
    run_dir = run_dir_of(args, method, seed)
    pl.seed_everything(seed, workers=True, verbose=False)
    last = LastCheckpoint(run_dir / "checkpoints" / "last.ckpt", args.checkpoint_every_n_steps)
    recorder = RunRecorder(run_dir, args.batch_size)
    # The recorder adds an epoch to the history before that epoch's checkpoint is written.
    callbacks: list[pl.Callback] = [*extra_callbacks, recorder, last]
    if not show_progress_bar(args):
        callbacks.append(EpochLines(f"{run_label(args, method)} seed {seed}"))
    trainer = build_trainer(args, run_dir, callbacks)
    # One run per folder, locked before any file in it is read or deleted. Rank 0 holds
    # the lock: the other ranks are processes of the same run.
    lock: AbstractContextManager[Any] = (
        RunFolderLock(run_dir) if trainer.is_global_zero else nullcontext()
    )
    with lock:
        return _train_and_evaluate(args, bundle, method, seed, run_dir, trainer, last, recorder)


def _train_and_evaluate(
    args: argparse.Namespace,
    bundle: DatasetBundle,
    method: str,
    seed: int,
    run_dir: Path,
    trainer: pl.Trainer,
    last: LastCheckpoint,
    recorder: RunRecorder,
) -> RunResult | None:
    """:func:`run_one`'s work, in the locked run folder: checks, training, evaluation."""
    ckpt_path = _resume_checkpoint(args, run_dir)
    fresh = ckpt_path is None
    if fresh and (run_dir / "checkpoints").exists() and not (args.overwrite or args.resume):
        raise UserError(
            f"{run_dir} already holds a run. Pass --resume auto to continue (or re-evaluate) "
            "it, --overwrite to replace it, or another --output-dir."
        )
    checkpoint: dict[str, Any] | None = None
    if ckpt_path is not None:
        try:
            if not os.path.isfile(ckpt_path):
                raise FileNotFoundError(
                    f"Checkpoint {ckpt_path!r} not found. Pass the path of a .ckpt file written "
                    "by this suite (<output-dir>/<dataset>/<method>/seed<k>/checkpoints/"
                    "last.ckpt), or --resume auto."
                )
            checkpoint = read_checkpoint(ckpt_path)
            methods.check_checkpoint_hparams(
                checkpoint.get("hyper_parameters", {}),
                method=method,
                backbone=args.backbone,
                num_classes_per_level=bundle.hierarchy.num_classes_per_level,
                source=f"Checkpoint {ckpt_path!r}",
            )
        except (FileNotFoundError, methods.CheckpointMismatchError) as error:
            raise UserError(str(error)) from error
    else:
        for stale in ("checkpoints/last.ckpt", "train_stats.json", "metrics.json"):
            (run_dir / stale).unlink(missing_ok=True)

    world = trainer.world_size
    config = result_config(args, method, seed, world, trainer.strategy.root_device.type, bundle)
    if checkpoint is not None:
        saved = checkpoint.get("callbacks", {}).get("RunRecorder", {}).get("config")
        if saved is not None:  # checkpoints of older versions recorded no settings
            check_resume_config(saved, config, f"Checkpoint {ckpt_path!r}")
    recorder.config = config
    if checkpoint is not None and args.resume == "auto":
        done = finished_record(run_dir, args, checkpoint)
        if done is not None:
            if trainer.is_global_zero:
                print(f"{run_dir}: finished, skipped (delete its metrics.json to evaluate again)")
            return RunResult(method, seed, run_dir, done) if trainer.is_global_zero else None
        if trainer.is_global_zero:
            print(f"{run_dir}: resuming from step {checkpoint.get('global_step', '?')}", flush=True)
    if args.batch_size % world != 0:
        raise UserError(
            f"--batch-size {args.batch_size} is the global batch size; it must be divisible "
            f"by the number of processes ({world})."
        )
    steps_per_epoch = (len(bundle.train) // world) // (args.batch_size // world)  # type: ignore[arg-type]
    if steps_per_epoch < 1:
        raise UserError(
            f"The training set has {len(bundle.train)} samples, fewer than one batch of "  # type: ignore[arg-type]
            f"--batch-size {args.batch_size}; lower --batch-size or raise --train-samples."
        )
    sampler_options = parse_options(args.sampler_option, "--sampler-option")
    if args.hierarchical_sampler:
        _check_hierarchical_sampler(bundle, args.batch_size // world, world, sampler_options)
    mask_warmup, mask_refit = methods.default_mask_schedule(steps_per_epoch * args.epochs)
    model = build_model(
        args,
        method,
        num_classes_per_level=bundle.hierarchy.num_classes_per_level,
        backbone=args.backbone,
        in_chans=bundle.in_chans,
        img_size=bundle.input_size,
        encoder=bundle.encoder,
        encoder_kwargs=bundle.encoder_kwargs or None,
        proj_dim=args.proj_dim,
        temperature=args.temperature,
        optimizer=args.optimizer,
        lr=args.lr,
        batch_size=args.batch_size,
        weight_decay=args.weight_decay,
        warmup_epochs=args.warmup_epochs,
        gather_distributed=world > 1,
        mask_warmup_steps=mask_warmup,
        mask_refit_every=mask_refit,
    )
    if args.compile:
        compile_model(model)
    if world > 1 and trainer.strategy.root_device.type == "cuda":
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    datamodule = SuiteDataModule(
        bundle,
        args.batch_size,
        args.num_workers,
        seed,
        args.hierarchical_sampler,
        sampler_options,
    )
    if trainer.is_global_zero:
        record = dict(vars(args), method=method, seed=seed, run_dir=str(run_dir))
        record.update(world_size=world, resumed_from=ckpt_path, split=bundle.split)
        write_json(run_dir / "config.json", record)
        write_json(run_dir / "environment.json", environment_info(seed))
    try:
        # weights_only=True: Lightning loads the checkpoint again, also without pickle.
        trainer.fit(model, datamodule=datamodule, ckpt_path=ckpt_path, weights_only=True)
    except SIGTERMException as stop:
        raise RunInterrupted(
            last.signal_name or "SIGTERM", last.path, trainer.global_step
        ) from stop
    except OSError as error:  # an unreadable file, raised by the dataset
        raise UserError(_last_line(error)) from error
    if not trainer.is_global_zero:
        return None
    return evaluate_run(args, bundle, model, method, seed, run_dir, trainer)


def finished_record(
    run_dir: Path, args: argparse.Namespace, checkpoint: dict[str, Any]
) -> dict[str, Any] | None:
    """The run's ``metrics.json`` if the run is finished, else ``None``.

    Finished: its records are whole (``metrics.json`` and ``train_stats.json`` read, or a
    one-line error naming the damaged one), it trained all of ``--epochs`` and was
    evaluated at the checkpoint's step. The checkpoint's settings were compared with this
    run's before (a changed setting is refused), so the record is this run's.
    """
    metrics_path = run_dir / "metrics.json"
    stats_path = run_dir / "train_stats.json"
    if not (metrics_path.is_file() and stats_path.is_file()):
        return None
    fix = (
        "Delete it and rerun with --resume auto to evaluate the run again, or start the run "
        "over with --overwrite."
    )
    record = read_json_record(metrics_path, fix)
    read_json_record(stats_path, fix)
    run = record.get("run", {})
    complete = bool(record.get("train", {}).get("train/complete"))
    same = run.get("epochs") == args.epochs and run.get("global_step") == checkpoint.get(
        "global_step"
    )
    return record if complete and same else None


def build_trainer(
    args: argparse.Namespace, run_dir: Path, callbacks: list[pl.Callback]
) -> pl.Trainer:
    """The Trainer of one run; Lightning parses --devices, --max-time and --precision."""
    deterministic: bool | Literal["warn"] = (
        "warn" if args.deterministic == "warn" else args.deterministic == "true"
    )
    try:
        return pl.Trainer(
            max_epochs=args.epochs,
            max_time=args.max_time,
            accelerator=args.accelerator,
            devices=args.devices,
            num_nodes=args.num_nodes,
            strategy=args.strategy,
            precision=args.precision,
            deterministic=deterministic,
            callbacks=callbacks,
            # logs/version_<n>/: a resumed invocation adds a version.
            logger=build_logger(args, run_dir),
            default_root_dir=run_dir,
            use_distributed_sampler=False,  # SuiteDataModule shards by rank itself
            enable_checkpointing=False,  # LastCheckpoint writes last.ckpt
            enable_progress_bar=show_progress_bar(args),
            enable_model_summary=False,
            log_every_n_steps=1,
            limit_val_batches=0,
            num_sanity_val_steps=0,
        )
    except (MisconfigurationException, TypeError, ValueError, RuntimeError) as error:
        raise UserError(
            "Bad Trainer setting (--accelerator, --devices, --strategy, --num-nodes or "
            f"--precision): {_last_line(error)}"
        ) from error


def build_logger(args: argparse.Namespace, run_dir: Path) -> Logger:
    """``--logger``: ``logs/version_<n>/metrics.csv``, or TensorBoard event files there."""
    if getattr(args, "logger", "csv") == "tensorboard":
        return TensorBoardLogger(save_dir=run_dir, name="logs", default_hp_metric=False)
    return CSVLogger(save_dir=run_dir, name="logs")


def compile_model(model: methods.HierarchicalMethod) -> None:
    """``torch.compile`` of the parts that run every step, as Lightly's ``--compile-model``.

    In place (``nn.Module.compile``), so checkpoints keep their keys and a compiled run
    resumes an uncompiled one and back. The loss keeps its value checks: they break the
    graph where they read a value, which costs a little speed and keeps the errors.
    """
    # A fresh cache for every run: each run's loss is another configuration, and dynamo's
    # per-function recompile limit (8) would count them all in one suite process.
    torch._dynamo.reset()
    parts = [model.backbone, model.projection_head, model.criterion]
    for part in parts:
        if part is not None:
            part.compile()


def build_model(args: argparse.Namespace, method: str, **kwargs: Any) -> methods.HierarchicalMethod:
    """The method's LightningModule with ``--loss-option``/``--head-option``; bad options
    become a UserError naming the flag."""
    loss_options = parse_options(args.loss_option, "--loss-option")
    head_options = parse_options(args.head_option, "--head-option")
    if loss_options or head_options:
        kwargs.update(loss_options=loss_options, head_options=head_options)
    if args.memory_bank:
        kwargs.update(memory_bank_size=args.memory_bank)
    if args.momentum_encoder is not None:
        kwargs.update(momentum_encoder=args.momentum_encoder)
    try:
        return methods.create_method(method, **kwargs)
    except (TypeError, ValueError, RuntimeError) as error:
        given = [*args.loss_option, *args.head_option]
        if args.memory_bank:
            given.append(f"--memory-bank {args.memory_bank}")
        if args.momentum_encoder is not None:
            given.append(f"--momentum-encoder {args.momentum_encoder}")
        options = f" (options {given})" if given else ""
        raise UserError(f"Cannot build method {method!r}{options}: {error}") from error


def parse_options(values: Sequence[str], flag: str) -> dict[str, Any]:
    """``KEY=VALUE`` strings to a dict; VALUE is JSON if it parses, else a string.

    Examples:
        >>> parse_options(["temperature=0.2", "layer_penalty=exp", "x=[1, 2]"], "--loss-option")
        {'temperature': 0.2, 'layer_penalty': 'exp', 'x': [1, 2]}
    """
    options: dict[str, Any] = {}
    for value in values:
        key, sep, raw = value.partition("=")
        key = key.strip()
        if not sep or not key.isidentifier():
            raise UserError(f"{flag} takes KEY=VALUE with a Python name as KEY, got {value!r}.")
        if key in options:
            raise UserError(f"{flag} {key} is given twice; give each key once.")
        try:
            options[key] = json.loads(raw)
        except json.JSONDecodeError:
            options[key] = raw
    return options


def _check_hierarchical_sampler(
    bundle: DatasetBundle, per_device: int, world: int, options: dict[str, Any]
) -> None:
    """Builds the sampler once here, so that a bad setting fails before training."""
    if bundle.train_label_paths is None:
        raise UserError(
            "--hierarchical-sampler needs the label paths of the training set: give the "
            "dataset a label_paths table (every lightly_hmlc dataset has one)."
        )
    from lightly_hmlc.data import HierarchicalBatchSampler

    # The suite sets these itself (per rank and epoch); an option may not override them.
    owned = {"label_paths", "batch_size", "num_replicas", "rank", "seed"}
    accepted = set(inspect.signature(HierarchicalBatchSampler).parameters) - owned
    unknown = sorted(set(options) - accepted)
    if unknown:
        raise UserError(
            f"--sampler-option {', '.join(unknown)} is not a HierarchicalBatchSampler "
            f"option; choose from {sorted(accepted)} (the suite sets {sorted(owned)})."
        )
    try:
        HierarchicalBatchSampler(
            bundle.train_label_paths, per_device, num_replicas=world, **options
        )
    except ValueError as error:
        raise UserError(f"--hierarchical-sampler: {error}") from error


def evaluate_run(
    args: argparse.Namespace,
    bundle: DatasetBundle,
    model: methods.HierarchicalMethod,
    method: str,
    seed: int,
    run_dir: Path,
    trainer: pl.Trainer,
) -> RunResult:
    """Probes the frozen backbone and writes metrics.json, metrics.md and the plots.

    A model with per-level features (``level_encoder()`` returning a module) also gets
    the identification score (:func:`identification_of`): ``ident/*`` keys in ``eval``,
    its matrix under the record's ``identification`` and ``identification.png``.
    """
    stats_path = run_dir / "train_stats.json"
    stats: dict[str, Any] = {}
    if stats_path.is_file():
        stats = read_json_record(
            stats_path,
            "Delete it and rerun with --resume auto (metrics.json then lacks the training "
            "figures), or start the run over with --overwrite.",
        )
    history = stats.pop("history", {})
    device = "cuda" if torch.cuda.is_available() and args.accelerator != "cpu" else "cpu"
    bar = show_progress_bar(args)
    begin = time.perf_counter()
    (train_x, train_y), (test_x, test_y) = _extract_splits(
        model.backbone, args, bundle, device, bar
    )
    extract_seconds = time.perf_counter() - begin
    results = evaluate_features(
        train_x,
        train_y,
        test_x,
        test_y,
        bundle.hierarchy,
        probe_epochs=args.probe_epochs,
        knn_k=min(args.knn_k, len(train_x)),
        hdist_k=min(5, len(bundle.hierarchy.leaves)),
        seed=seed,
        device=device,
        progress=bar,
    )
    ident = identification_of(args, bundle, model, seed, device, bar)
    if ident.matrix is not None:
        results.update(identification_metrics(ident.matrix))
        results["ident/seconds"] = ident.seconds
    train = {f"train/{key}": value for key, value in stats.items()}
    train["train/complete"] = int(stats.get("epochs_completed", 0)) >= args.epochs
    record: dict[str, Any] = {
        "run": {
            "dataset": args.dataset,
            "method": method,
            "name": run_label(args, method),
            "seed": seed,
            "backbone": args.backbone,
            "epochs": args.epochs,
            "global_step": trainer.global_step,
            "loss_options": parse_options(args.loss_option, "--loss-option"),
            "head_options": parse_options(args.head_option, "--head-option"),
        },
        "split": bundle.split,
        "train": train,
        "eval": {"eval/extract_seconds": extract_seconds, **results},
        # The matrix is not a scalar: beside "eval", whose values are all numbers.
        "identification": ident.record(),
    }
    write_json(run_dir / "metrics.json", record)
    title = (
        f"# {run_label(args, method)} on {args.dataset} ({args.eval_split} split), seed {seed}, "
        f"backbone {args.backbone}\n\n"
    )
    training = (
        f"\n\nTraining: {stats.get('wall_seconds', 0.0):.1f} s, "
        f"{stats.get('images_per_second', 0.0):.1f} images/s, "
        f"{stats.get('epochs_completed', 0)}/{args.epochs} epochs, peak memory "
        f"{stats.get('peak_memory_mb', 0.0):.0f} MB ({stats.get('peak_memory_kind', '?')}).\n"
    )
    table = format_metrics_table({method: results})
    write_text_atomic(run_dir / "metrics.md", title + table + training + ident.markdown())
    if args.plots:
        plot_embeddings(test_x, test_y, bundle.hierarchy, run_dir / "embeddings.png", seed=seed)
        if ident.matrix is not None:
            plot_identification(ident.matrix, run_dir / "identification.png")
        if any(history.values()):
            plot_training_curves(history, run_dir / "training_curves.png")
    return RunResult(method, seed, run_dir, record)


@dataclass
class Identification:
    """The identification score's inputs of one run: its matrix, or why it is undefined."""

    matrix: torch.Tensor | None
    undefined: str | None = None
    seconds: float = 0.0

    def record(self) -> dict[str, Any]:
        """The ``identification`` entry of metrics.json: the matrix (fractions, rows the
        features of each level, columns the predicted level), or why there is none."""
        if self.matrix is None:
            return {"matrix": None, "undefined": self.undefined}
        return {
            "matrix": self.matrix.tolist(),
            "rows": "features of level l",
            "columns": "predicted level",
        }

    def markdown(self) -> str:
        """The paragraph of metrics.md: the matrix in %, or ``undefined (<why>)``."""
        if self.matrix is None:
            return f"\nIdentification score: undefined ({self.undefined}).\n"
        return (
            "\nIdentification: linear-probe test accuracy (%) of each level's own features "
            "(rows) at every level (columns); the advantages above are the diagonal minus the "
            "mean of the column's other rows.\n\n"
            + format_identification_matrix(self.matrix)
            + "\n"
        )


def identification_of(
    args: argparse.Namespace,
    bundle: DatasetBundle,
    model: methods.HierarchicalMethod,
    seed: int,
    device: str,
    progress: bool,
) -> Identification:
    """The identification matrix of a model with per-level features (``level_encoder()``
    returning a module that maps images to ``[B, L, D]``); undefined without them or with
    a single level."""
    encoder = model.level_encoder()
    if encoder is None:
        return Identification(None, "no per-level features")
    num_levels = bundle.hierarchy.num_levels
    if num_levels < 2:
        return Identification(None, "a single hierarchy level")
    begin = time.perf_counter()
    (train_x, train_y), (test_x, test_y) = _extract_splits(encoder, args, bundle, device, progress)
    matrix = identification_matrix(
        split_levels(train_x, num_levels),
        train_y,
        split_levels(test_x, num_levels),
        test_y,
        bundle.hierarchy,
        probe_epochs=args.probe_epochs,
        seed=seed,
        device=device,
        progress=progress,
    )
    return Identification(matrix, seconds=time.perf_counter() - begin)


def _extract_splits(
    module: nn.Module,
    args: argparse.Namespace,
    bundle: DatasetBundle,
    device: str,
    progress: bool,
) -> tuple[tuple[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
    """``module``'s outputs and the label paths of the train and test evaluation sets; an
    unreadable file is one ``UserError`` line."""
    batch, workers = args.eval_batch_size, args.num_workers
    try:
        train = extract_features(module, bundle.train_eval, batch, workers, device, progress)
        test = extract_features(module, bundle.test_eval, batch, workers, device, progress)
    except OSError as error:
        raise UserError(_last_line(error)) from error
    return train, test


def _last_line(error: BaseException) -> str:
    text = str(error).strip()
    if "Original Traceback" in text:  # re-raised from a DataLoader worker
        text = text.splitlines()[-1]
    return text
