"""The files of a run folder, written and read safely.

``write_text_atomic`` writes a record to a temporary file in the same folder and then
renames it over the record (``os.replace``), so that a run killed at any moment leaves
either the previous record or the new one, never a truncated file. ``read_json_record``
reads a record back and turns a damaged one into one line naming the file and the fix.
``RunFolderLock`` keeps a second run out of a folder that a run is writing.

This module imports nothing heavy: ``compare.py`` uses it too.
"""

from __future__ import annotations

import errno
import json
import os
import socket
import sys
import tempfile
from pathlib import Path
from types import TracebackType
from typing import Any


class RunFileError(Exception):
    """A run folder's file is unusable (damaged record, folder in use): one line, exit 2."""


def write_text_atomic(path: Path, text: str) -> None:
    """Writes ``text`` to ``path`` through a temporary file and a rename (creating the folder).

    Examples:
        >>> import tempfile
        >>> folder = Path(tempfile.mkdtemp())
        >>> write_text_atomic(folder / "a" / "note.md", "# done\\n")
        >>> (folder / "a" / "note.md").read_text(), sorted(p.name for p in (folder / "a").iterdir())
        ('# done\\n', ['note.md'])
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    # The same folder: a rename within one filesystem is atomic.
    fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as file:
            file.write(text)
            file.flush()
            os.fsync(file.fileno())  # the data is on disk before the name points at it
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def read_json_record(path: Path, fix: str) -> Any:
    """The JSON in ``path``; a damaged file raises :class:`RunFileError` naming it and ``fix``.

    Examples:
        >>> import tempfile
        >>> path = Path(tempfile.mkdtemp()) / "metrics.json"
        >>> _ = path.write_text('{"run": {"seed"')
        >>> read_json_record(path, "Rerun it.")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        run_files.RunFileError: .../metrics.json is truncated or not JSON (...). Rerun it.
    """
    text = path.read_text()
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        raise RunFileError(f"{path} is truncated or not JSON ({error}). {fix}") from error


# What to check, by errno, for the filesystem errors a run meets most.
_OS_ERROR_HINTS = {
    errno.EACCES: "check its permissions",
    errno.EPERM: "check its permissions",
    errno.EROFS: "the filesystem is read-only",
    errno.ENOSPC: "free some space on that disk",
    errno.EDQUOT: "free some space on that disk (quota)",
    errno.ENOTDIR: "a part of the path is a file, not a folder",
    errno.EEXIST: "a file is where a folder should be",
}


def os_error_line(error: OSError) -> str:
    """One line for a filesystem error: the path, the cause and what to check.

    Examples:
        >>> os_error_line(NotADirectoryError(errno.ENOTDIR, "Not a directory", "/tmp/f/runs"))
        "cannot use '/tmp/f/runs': Not a directory (a part of the path is a file, not a folder)."
        >>> os_error_line(FileNotFoundError("No run under 'x'."))
        "No run under 'x'."
    """
    if error.filename is None:  # a message of our own, or no path known
        return str(error)
    hint = _OS_ERROR_HINTS.get(error.errno or 0)
    return f"cannot use {str(error.filename)!r}: {error.strerror}" + (
        f" ({hint})." if hint else "."
    )


class RunFolderLock:
    """While held, ``<folder>/run.lock`` names the process (pid and host) writing the folder.

    The lock file is created with ``O_CREAT | O_EXCL``, so of two runs started at once
    exactly one gets it; the other raises :class:`RunFileError` naming the owner. A lock
    left by a process that is gone (same host, pid not running) is taken over, and that is
    printed. The lock is removed when the ``with`` block ends, on errors too.

    Examples:
        >>> import tempfile
        >>> folder = Path(tempfile.mkdtemp())
        >>> with RunFolderLock(folder):
        ...     RunFolderLock(folder).__enter__()  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        run_files.RunFileError: ... is in use by process ... on host ...
        >>> (folder / "run.lock").exists()
        False
    """

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.path = folder / "run.lock"
        self.owner = {"pid": os.getpid(), "host": socket.gethostname()}

    def __enter__(self) -> RunFolderLock:
        self.folder.mkdir(parents=True, exist_ok=True)
        while not self._create():
            holder = _lock_owner(self.path)
            if holder is None or not self._is_gone(holder):
                shown = f"process {holder['pid']} on host {holder['host']}" if holder else "a run"
                raise RunFileError(
                    f"{self.folder} is in use by {shown} (lock file {self.path}). Wait for that "
                    "run to end or use another --output-dir; if no run is using the folder, "
                    "delete the lock file."
                )
            self._take_over(holder)
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if _lock_owner(self.path) == self.owner:  # not if another run took it over
            self.path.unlink(missing_ok=True)

    def _create(self) -> bool:
        try:
            fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(fd, "w") as file:
            json.dump(self.owner, file)
        return True

    def _is_gone(self, holder: dict[str, Any]) -> bool:
        if holder["host"] != self.owner["host"]:
            return False  # another machine's processes cannot be checked from here
        try:
            os.kill(holder["pid"], 0)  # signal 0: only asks whether the process exists
        except ProcessLookupError:
            return True
        except PermissionError:  # it exists, as another user's process
            return False
        return False

    def _take_over(self, holder: dict[str, Any]) -> None:
        # Renamed away rather than deleted: if another run took the stale lock over first,
        # the renamed file is that run's live lock, and it is put back (os.link never
        # replaces a file).
        moved = self.path.with_name(f"{self.path.name}.stale-{os.getpid()}")
        try:
            os.rename(self.path, moved)
        except FileNotFoundError:
            return  # the other run's lock is gone too: try again
        if _lock_owner(moved) == holder:
            print(
                f"{self.folder}: taking over the lock of process {holder['pid']} on host "
                f"{holder['host']}, which is no longer running.",
                file=sys.stderr,
            )
        else:
            try:
                os.link(moved, self.path)
            except FileExistsError:
                pass
        moved.unlink()


def _lock_owner(path: Path) -> dict[str, Any] | None:
    """``{"pid", "host"}`` of a lock file; ``None`` if it is absent, being written or damaged."""
    try:
        owner = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    if isinstance(owner, dict) and isinstance(owner.get("pid"), int) and "host" in owner:
        return owner
    return None
