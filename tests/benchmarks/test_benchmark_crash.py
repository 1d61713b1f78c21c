"""Crash-safe runs (issue 9): a checkpoint every epoch (and every N steps); a run killed
with SIGKILL, or stopped by SIGTERM, resumes with ``--resume auto`` to the metrics of an
uninterrupted run; a resume with changed settings is refused."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import main
import pytest
import pytorch_lightning as pl
import torch

from tests.benchmarks.suite_utils import LEVEL_KEYS, load_metrics, tiny_args

pytestmark = pytest.mark.usefixtures("one_thread")

REPO = Path(__file__).resolve().parents[2]
RUN = "shapes/g-hmlc/seed0"
# g-hmlc: weights, optimiser, schedule and the GMM statistics must all resume. Eight
# steps per epoch, so that a signal lands inside an epoch.
LONG = (
    "--methods", "g-hmlc", "--epochs", "3", "--train-samples", "256", "--no-plots",
    "--deterministic", "true", "--threads", "1",
)  # fmt: skip


def _step(checkpoint: Path) -> int:
    return int(torch.load(checkpoint, map_location="cpu", weights_only=True)["global_step"])


@pytest.fixture(scope="module")
def straight(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    out = tmp_path_factory.mktemp("straight")
    threads = torch.get_num_threads()
    assert main.main(tiny_args(out, *LONG)) == 0
    torch.set_num_threads(threads)
    return load_metrics(out / RUN)


def _start(out: Path) -> subprocess.Popen[str]:
    env = dict(os.environ, PYTHONPATH=str(REPO), MPLBACKEND="Agg")
    command = [sys.executable, str(REPO / "benchmarks/main.py"), *tiny_args(out, *LONG)]
    return subprocess.Popen(
        command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def _wait_for_first_checkpoint(process: subprocess.Popen[str], checkpoint: Path) -> None:
    deadline = time.monotonic() + 120
    while not checkpoint.is_file():
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline, "no checkpoint after 120 s"
        time.sleep(0.01)


def _assert_same_metrics(resumed: dict[str, Any], straight: dict[str, Any]) -> None:
    assert resumed["run"]["global_step"] == straight["run"]["global_step"] == 24
    assert resumed["train"]["train/samples"] == straight["train"]["train/samples"]
    assert resumed["train"]["train/complete"] is True
    for key in [*LEVEL_KEYS, "hier/mistake_severity", "hier/hdist@5"]:
        assert resumed["eval"][key] == pytest.approx(straight["eval"][key], abs=1e-6), key


def _resume(out: Path) -> dict[str, Any]:
    threads = torch.get_num_threads()
    assert main.main(tiny_args(out, *LONG, "--resume", "auto")) == 0
    torch.set_num_threads(threads)
    return load_metrics(out / RUN)


@pytest.mark.slow
def test_run_killed_with_sigkill_resumes_to_the_uninterrupted_metrics(
    tmp_path: Path, straight: dict[str, Any]
) -> None:
    checkpoint = tmp_path / RUN / "checkpoints/last.ckpt"
    process = _start(tmp_path)
    _wait_for_first_checkpoint(process, checkpoint)
    process.send_signal(signal.SIGKILL)
    process.communicate(timeout=60)
    assert process.returncode == -signal.SIGKILL
    assert not (tmp_path / RUN / "metrics.json").exists(), "the run ended before the kill"
    step = _step(checkpoint)  # loadable: written to a temporary file, then renamed
    assert step in (8, 16), step
    _assert_same_metrics(_resume(tmp_path), straight)


@pytest.mark.slow
def test_sigterm_saves_a_checkpoint_says_how_to_resume_and_exits_143(
    tmp_path: Path, straight: dict[str, Any]
) -> None:
    checkpoint = tmp_path / RUN / "checkpoints/last.ckpt"
    process = _start(tmp_path)
    _wait_for_first_checkpoint(process, checkpoint)
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 143, err
    lines = [line for line in err.splitlines() if "resume" in line.lower()]
    assert len(lines) == 1 and lines[0].startswith("interrupted by SIGTERM"), err
    assert "--resume auto" in lines[0] and str(checkpoint) in lines[0]
    assert "Traceback" not in err
    step = _step(checkpoint)
    assert 8 <= step < 24, step  # after the current batch (or epoch 0's end), before the end
    _assert_same_metrics(_resume(tmp_path), straight)


class CheckpointSteps(pl.Callback):
    """Reads last.ckpt's step at every epoch start and batch end."""

    def __init__(self, checkpoint: Path) -> None:
        self.checkpoint = checkpoint
        self.at_epoch_start: list[int] = []
        self.at_batch_end: list[tuple[int, int]] = []

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.checkpoint.is_file():
            self.at_epoch_start.append(_step(self.checkpoint))

    def on_train_batch_end(self, trainer: pl.Trainer, *args: Any) -> None:
        if self.checkpoint.is_file():
            self.at_batch_end.append((trainer.global_step, _step(self.checkpoint)))


def test_a_checkpoint_is_written_at_every_epoch_end(tmp_path: Path) -> None:
    steps = CheckpointSteps(tmp_path / "shapes/hmce/seed0/checkpoints/last.ckpt")
    args = tiny_args(tmp_path, "--methods", "hmce", "--epochs", "3", "--no-plots")
    main.run_suite(main.parse_args(args), extra_callbacks=[steps])
    assert steps.at_epoch_start == [2, 4]  # two steps per epoch
    assert not list((tmp_path / "shapes/hmce/seed0/checkpoints").glob("*.partial"))


def test_checkpoint_every_n_steps_writes_inside_epochs(tmp_path: Path) -> None:
    steps = CheckpointSteps(tmp_path / "shapes/hmce/seed0/checkpoints/last.ckpt")
    args = tiny_args(
        tmp_path, "--methods", "hmce", "--train-samples", "128", "--checkpoint-every-n-steps", "1"
    )
    main.run_suite(main.parse_args([*args, "--no-plots"]), extra_callbacks=[steps])
    # At the end of step g the file holds step g - 1: written when step g began.
    assert steps.at_batch_end == [(g, g - 1) for g in range(2, 5)]


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("finished")
    main.run_suite(main.parse_args(tiny_args(out, "--methods", "hmce", "--no-plots")))
    return out


def test_resume_with_changed_settings_is_refused_naming_each_change(
    finished_run: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    changed = ("--temperature", "0.2", "--batch-size", "16", "--loss-option", "layer_penalty=pow2")
    args = tiny_args(finished_run, "--methods", "hmce", "--resume", "auto", *changed)
    assert main.main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1
    assert "--temperature 0.1 -> 0.2" in err and "--batch-size 32 -> 16" in err
    assert '--loss-option [] -> ["layer_penalty=pow2"]' in err


def test_resume_may_extend_epochs_and_change_paths_and_workers(finished_run: Path) -> None:
    run_dir = finished_run / "shapes/hmce/seed0"
    assert _step(run_dir / "checkpoints/last.ckpt") == 2
    extend = ("--epochs", "2", "--num-workers", "0", "--no-plots", "--progress-bar")
    args = tiny_args(finished_run, "--methods", "hmce", "--resume", "auto", *extend)
    assert main.main(args) == 0
    assert load_metrics(run_dir)["run"]["global_step"] == 4
    assert _step(run_dir / "checkpoints/last.ckpt") == 4


@pytest.mark.parametrize(
    ("extra", "named"),
    [
        (("--backbone", "no_such_model"), "--backbone 'no_such_model' is not a timm model"),
        (("--batch-size", "0"), "--batch-size must be"),
        (("--max-time", "abc"), "--max-time 'abc' is not a duration"),
        (("--proj-dim", "0"), "--proj-dim must be"),
        (("--temperature", "-1"), "--temperature must be"),
        (("--temperature", "inf"), "--temperature must be"),
        (("--epochs", "0"), "--epochs must be"),
        (("--train-samples", "0"), "--train-samples must be"),
        (("--checkpoint-every-n-steps", "0"), "--checkpoint-every-n-steps must be"),
        (("--devices", "many"), "Bad Trainer setting"),
    ],
)
def test_bad_values_are_one_line_errors_with_exit_code_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], extra: tuple[str, ...], named: str
) -> None:
    assert main.main(tiny_args(tmp_path, "--methods", "hmce", *extra)) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1, err
    assert named in err


def test_truncated_checkpoint_is_a_one_line_error(
    tmp_path: Path, finished_run: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    good = (finished_run / "shapes/hmce/seed0/checkpoints/last.ckpt").read_bytes()
    broken = tmp_path / "shapes/hmce/seed0/checkpoints/last.ckpt"
    broken.parent.mkdir(parents=True)
    broken.write_bytes(good[: len(good) // 2])
    assert main.main(tiny_args(tmp_path, "--methods", "hmce", "--resume", "auto")) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: Cannot read checkpoint") and err.count("\n") == 1, err
    assert "truncated" in err and "--overwrite" in err


class SignalAtStep(pl.Callback):
    """Sends a signal to this process at the end of one step, as a user or scheduler would."""

    def __init__(self, signum: int, step: int) -> None:
        self.signum = signum
        self.step = step

    def on_train_batch_end(self, trainer: pl.Trainer, *args: Any) -> None:
        if trainer.global_step == self.step:
            signal.raise_signal(self.signum)


@pytest.mark.parametrize("workers", ["0", "2"])
def test_sigint_stops_after_the_batch_saves_and_resumes_inside_the_epoch(
    tmp_path: Path, workers: str
) -> None:
    # With workers the loader prefetches before Lightning restores the epoch counter.
    common: tuple[str, ...]
    common = ("--methods", "hmce", "--epochs", "2", "--no-plots", "--deterministic", "true")
    common = (*common, "--num-workers", workers)
    main.run_suite(main.parse_args(tiny_args(tmp_path / "straight", *common)))
    args = main.parse_args(tiny_args(tmp_path, *common))
    handler = signal.getsignal(signal.SIGINT)
    with pytest.raises(main.RunInterrupted) as stopped:
        main.run_suite(args, extra_callbacks=[SignalAtStep(signal.SIGINT, 3)])
    assert signal.getsignal(signal.SIGINT) is handler  # restored
    assert stopped.value.signal_name == "SIGINT" and stopped.value.exit_code == 130
    # Step 3 of 4: the first of epoch 1's two batches; the resume trains the second.
    assert stopped.value.step == 3 and _step(stopped.value.checkpoint) == 3
    main.run_suite(main.parse_args(tiny_args(tmp_path, *common, "--resume", "auto")))
    resumed = load_metrics(tmp_path / "shapes/hmce/seed0")
    straight = load_metrics(tmp_path / "straight/shapes/hmce/seed0")
    assert resumed["run"]["global_step"] == 4
    assert resumed["train"]["train/samples"] == straight["train"]["train/samples"] == 128
    for key in [*LEVEL_KEYS, "hier/mistake_severity"]:
        assert resumed["eval"][key] == pytest.approx(straight["eval"][key], abs=1e-6), key
