"""The suite is safe on files it did not write: checkpoints load without pickle, one run
per folder, records written atomically, damaged records and filesystem errors reported in
one line (exit code 2)."""

from __future__ import annotations

import errno
import json
import os
import shlex
import shutil
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import compare
import finished_run
import main
import pytest
import records
import run
import torch
from run_files import RunFileError, RunFolderLock

from tests.benchmarks.suite_utils import tiny_args

pytestmark = pytest.mark.usefixtures("one_thread")

REPO = Path(__file__).resolve().parents[2]
RUN = "shapes/hmce/seed0"
HMCE = ("--methods", "hmce", "--no-plots")


class RunsAShellCommand:
    """Unpickling this runs ``command``: what a hostile checkpoint would do."""

    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        return os.system, (self.command,)


def _write_hostile_checkpoint(path: Path, marker: Path) -> None:
    payload = RunsAShellCommand(f"touch {shlex.quote(str(marker))}")
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"state_dict": {}, "hyper_parameters": {"method": payload}}, path)


def _one_error_line(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1, err
    assert "Traceback" not in err
    return err


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The output folder of a finished tiny run (tests that change it work on a copy)."""
    out = tmp_path_factory.mktemp("finished")
    assert main.main(tiny_args(out, *HMCE)) == 0
    return out


def _copy(finished: Path, tmp_path: Path) -> Path:
    out = tmp_path / "out"
    shutil.copytree(finished, out)
    return out


# Checkpoints load without pickle.


@pytest.mark.parametrize("resume", ["auto", "path"])
def test_a_checkpoint_that_needs_pickle_is_refused_and_never_run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], resume: str
) -> None:
    marker = tmp_path / "MARKER"
    checkpoint = tmp_path / "out" / RUN / "checkpoints/last.ckpt"
    _write_hostile_checkpoint(checkpoint, marker)
    given = "auto" if resume == "auto" else str(checkpoint)
    assert main.main(tiny_args(tmp_path / "out", *HMCE, "--resume", given)) == 2
    assert not marker.exists()
    err = _one_error_line(capsys)
    assert f"Refused checkpoint {str(checkpoint)!r}" in err and "pickle" in err
    assert "GLOBAL posix.system" in err and "--overwrite" in err
    assert not (tmp_path / "out" / RUN / "run.lock").exists()  # released on the error


def test_the_finished_run_reader_refuses_a_checkpoint_that_needs_pickle(tmp_path: Path) -> None:
    marker = tmp_path / "MARKER"
    _write_hostile_checkpoint(tmp_path / "checkpoints/last.ckpt", marker)
    with pytest.raises(SystemExit, match="Refused checkpoint .*pickle"):
        finished_run.load_model(tmp_path)
    assert not marker.exists()


def test_a_resume_loads_every_checkpoint_without_pickle(
    tmp_path: Path, finished: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = _copy(finished, tmp_path)
    calls: list[Any] = []
    load = torch.load

    def recording_load(*args: Any, **kwargs: Any) -> Any:
        calls.append(kwargs.get("weights_only"))
        return load(*args, **kwargs)

    monkeypatch.setattr(torch, "load", recording_load)
    assert main.main(tiny_args(out, *HMCE, "--epochs", "2", "--resume", "auto")) == 0
    # The suite's check, then Lightning's restore: both without pickle.
    assert len(calls) >= 2 and all(c is True for c in calls), calls
    assert finished_run.load_model(out / RUN).hparams["method"] == "hmce"


# One run per folder.


@pytest.mark.slow
def test_of_two_runs_started_together_into_one_folder_one_is_refused(tmp_path: Path) -> None:
    env = dict(os.environ, PYTHONPATH=str(REPO), MPLBACKEND="Agg")
    args = tiny_args(tmp_path, *HMCE, "--epochs", "2", "--train-samples", "256", "--threads", "1")
    command = [sys.executable, str(REPO / "benchmarks/main.py"), *args]
    processes = [
        subprocess.Popen(
            command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        for _ in range(2)
    ]
    outcomes = [(p.pid, p.wait(timeout=300), p.communicate()[1]) for p in processes]
    assert sorted(code for _, code, _ in outcomes) == [0, 2], outcomes
    (winner, _, _), (_, _, refused) = sorted(outcomes, key=lambda outcome: outcome[1])
    # Lightning's device lines come first: the Trainer tells which process is rank 0.
    errors = [line for line in refused.splitlines() if "error" in line.lower()]
    assert len(errors) == 1 and errors[0].startswith("error: ") and "Traceback" not in refused
    owner = f"is in use by process {winner} on host {socket.gethostname()}"
    assert owner in errors[0] and str(tmp_path / RUN / "run.lock") in errors[0]
    assert json.loads((tmp_path / RUN / "config.json").read_text())["resumed_from"] is None
    assert not (tmp_path / RUN / "run.lock").exists()


def _gone_pid() -> int:
    process = subprocess.Popen(["true"])
    process.wait()
    return process.pid


def test_a_lock_left_by_a_process_that_is_gone_is_taken_over(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    lock = tmp_path / RUN / "run.lock"
    lock.parent.mkdir(parents=True)
    pid = _gone_pid()
    lock.write_text(json.dumps({"pid": pid, "host": socket.gethostname()}))
    assert main.main(tiny_args(tmp_path, *HMCE)) == 0
    lines = [line for line in capsys.readouterr().err.splitlines() if "lock" in line]
    assert lines == [
        f"{tmp_path / RUN}: taking over the lock of process {pid} on host "
        f"{socket.gethostname()}, which is no longer running."
    ]
    assert not lock.exists()


@pytest.mark.parametrize(
    ("content", "named"),
    [
        ({"pid": 1, "host": "elsewhere"}, "process 1 on host elsewhere"),  # cannot be checked
        ({"pid": os.getpid(), "host": socket.gethostname()}, f"process {os.getpid()} on host"),
        ("not json", "in use by a run"),
    ],
    # Fixed ids: the pid differs between xdist workers, which must collect the same tests.
    ids=["other-host", "live-process", "unreadable"],
)
def test_a_lock_held_or_unreadable_refuses_the_run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], content: Any, named: str
) -> None:
    lock = tmp_path / RUN / "run.lock"
    lock.parent.mkdir(parents=True)
    lock.write_text(content if isinstance(content, str) else json.dumps(content))
    assert main.main(tiny_args(tmp_path, *HMCE)) == 2
    err = _one_error_line(capsys)
    assert named in err and str(lock) in err and "delete the lock file" in err
    assert lock.exists() and not (tmp_path / RUN / "config.json").exists()


def test_the_lock_is_released_on_errors_and_not_taken_from_its_new_owner(tmp_path: Path) -> None:
    with pytest.raises(ValueError), RunFolderLock(tmp_path):
        raise ValueError("a failing run")
    assert not (tmp_path / "run.lock").exists()
    with RunFolderLock(tmp_path):
        (tmp_path / "run.lock").write_text(json.dumps({"pid": 1, "host": "elsewhere"}))
    assert (tmp_path / "run.lock").exists()  # another run's lock now: left in place


# Records are written atomically; damaged ones are named.


def test_every_record_of_a_run_is_written_by_a_rename(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    replaced: list[str] = []
    rename = os.replace

    def recording_replace(src: Any, dst: Any) -> None:
        replaced.append(Path(dst).name)
        rename(src, dst)

    monkeypatch.setattr(os, "replace", recording_replace)
    assert main.main(tiny_args(tmp_path, *HMCE)) == 0
    expected = {"config.json", "environment.json", "train_stats.json", "metrics.json"}
    assert expected | {"metrics.md", "summary.md", "last.ckpt"} <= set(replaced), replaced
    assert not list(tmp_path.rglob("*.tmp"))


def test_a_record_cut_off_while_written_leaves_the_previous_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "metrics.json"
    records.write_json(path, {"old": 1})

    def killed(src: Any, dst: Any) -> None:
        raise KeyboardInterrupt  # the process stops between the write and the rename

    monkeypatch.setattr(os, "replace", killed)
    with pytest.raises(KeyboardInterrupt):
        records.write_json(path, {"new": 2})
    assert json.loads(path.read_text()) == {"old": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.json"]


def _truncate(path: Path) -> None:
    path.write_text(path.read_text()[: len(path.read_text()) // 2])


def test_truncated_train_stats_on_resume_is_one_line_naming_the_file(
    tmp_path: Path, finished: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = _copy(finished, tmp_path)
    _truncate(out / RUN / "train_stats.json")
    assert main.main(tiny_args(out, *HMCE, "--resume", "auto")) == 2
    err = _one_error_line(capsys)
    assert f"{out / RUN / 'train_stats.json'} is truncated or not JSON" in err
    assert "--resume auto" in err and "--overwrite" in err
    assert not (out / RUN / "run.lock").exists()


def test_truncated_metrics_in_compare_is_one_line_naming_the_file(
    tmp_path: Path, finished: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = _copy(finished, tmp_path)
    _truncate(out / RUN / "metrics.json")
    assert main.main(["compare", str(out)]) == 2
    err = _one_error_line(capsys)
    assert f"{out / RUN / 'metrics.json'} is truncated or not JSON" in err
    assert "--resume auto" in err
    with pytest.raises(RunFileError):
        main.main(["compare", str(out), "--traceback"])


def test_truncated_config_in_the_finished_run_reader_names_the_file(
    tmp_path: Path, finished: Path
) -> None:
    out = _copy(finished, tmp_path)
    _truncate(out / RUN / "config.json")
    with pytest.raises(SystemExit, match="config.json is truncated or not JSON .*--resume auto"):
        finished_run.run_args(out / RUN)


# Filesystem errors are one line naming the path.


def test_an_output_folder_under_a_file_is_one_line_naming_the_path(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "file").write_text("")
    out = tmp_path / "file" / "runs"
    assert main.main(tiny_args(out, *HMCE)) == 2
    err = _one_error_line(capsys)
    assert f"error: cannot use '{out / RUN}': Not a directory" in err
    with pytest.raises(NotADirectoryError):
        main.main(tiny_args(out, *HMCE, "--traceback"))


# The tests run as root, for whom a read-only folder is still writable: the errors of a
# read-only folder and of a full disk are raised where the suite writes its first record.
@pytest.mark.parametrize(
    ("error", "shown"),
    [
        (errno.EACCES, "Permission denied (check its permissions)"),
        (errno.EROFS, "Read-only file system (the filesystem is read-only)"),
        (errno.ENOSPC, "No space left on device (free some space on that disk)"),
    ],
)
def test_a_record_that_cannot_be_written_is_one_line_naming_the_path(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    error: int,
    shown: str,
) -> None:
    def failing_write(path: Path, data: Any) -> None:
        raise OSError(error, os.strerror(error), str(path))

    monkeypatch.setattr(run, "write_json", failing_write)
    assert main.main(tiny_args(tmp_path, *HMCE)) == 2
    err = _one_error_line(capsys)
    assert f"error: cannot use '{tmp_path / RUN / 'config.json'}': {shown}." in err
    assert not (tmp_path / RUN / "run.lock").exists()


def test_compare_output_under_a_file_is_one_line_naming_the_path(
    tmp_path: Path, finished: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "file").write_text("")
    table = tmp_path / "file" / "table.md"
    assert compare.main([str(finished), "--output", str(table)]) == 2
    err = _one_error_line(capsys)
    assert f"error: cannot use '{table.parent}': File exists (a file is where a folder" in err
