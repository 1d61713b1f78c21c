"""A finished suite run, read back: its settings and its trained model.

The lab's analysis scripts (``lab/mask_report.py``) read a run folder
(``.../<dataset>/<method>/seed<k>``) the same way: the suite arguments from the run's
``config.json`` and the model from ``checkpoints/last.ckpt``, rebuilt from the
checkpoint's hyper-parameters and loaded strictly, so that a checkpoint that does not
fit the code fails loudly instead of leaving weights at their initial values. The
checkpoint is loaded without pickle (``run.read_checkpoint``): one that needs pickle is
refused, since loading it could run any code.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import methods
from cli import parse_args
from datasets import UserError
from run import read_checkpoint
from run_files import RunFileError, read_json_record


def run_args(run_dir: Path) -> argparse.Namespace:
    """The suite arguments of a finished run: the defaults updated by its config.json."""
    config_path = run_dir / "config.json"
    if not config_path.is_file():
        raise SystemExit(
            f"{run_dir}: no config.json; pass the folder of one run (.../<method>/seed<k>)."
        )
    args = parse_args([])
    try:
        config = read_json_record(
            config_path, "Rerun the run with --resume auto to write it again."
        )
    except RunFileError as error:
        raise SystemExit(str(error)) from error
    for key, value in config.items():
        if hasattr(args, key):
            setattr(args, key, value)
    return args


def load_model(run_dir: Path) -> methods.HierarchicalMethod:
    """The run's trained model, in eval mode."""
    ckpt_path = run_dir / "checkpoints" / "last.ckpt"
    if not ckpt_path.is_file():
        raise SystemExit(f"{run_dir}: no checkpoints/last.ckpt; has the run finished?")
    try:
        ckpt = read_checkpoint(ckpt_path)  # without pickle: a foreign file is refused
    except UserError as error:
        raise SystemExit(str(error)) from error
    hparams = dict(ckpt["hyper_parameters"])
    model = methods.create_method(hparams.pop("method"), **hparams)
    model.on_load_checkpoint(ckpt)  # its checks, and the state of older layouts
    model.load_state_dict(ckpt["state_dict"])
    return model.eval()
