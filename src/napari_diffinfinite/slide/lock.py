"""One writer per slide store: a lock file in the store naming its writer.

The lock is ``<store>/diffinfinite/writer.lock``. A writer creates it, holds an exclusive
``flock`` on it for as long as it writes, and records in it who it is (pid, host, start time,
command line), so that a second writer is refused with a message naming the first. The
``flock`` is what decides: the kernel releases it when the process ends however it ends
(``kill -9`` included), so a lock file left by a dead process on this host is simply taken
over, and two processes racing for a stale lock cannot both win. A lock written on another
host cannot be checked from here (its process may be alive) and is refused with the command
to remove it. Readers never look at the lock.

Releasing (:meth:`WriterLock.release`, also run at interpreter exit and when the holder is
garbage-collected) unlinks the file while still holding the ``flock``; an acquirer checks after
locking that the file it locked is still the one at the path, so it never holds a lock on a
file that was already removed.
"""

from __future__ import annotations

import atexit
import datetime as _dt
import gc
import json
import os
import socket
import sys
import threading
import weakref
from pathlib import Path
from typing import Any

from ..errors import StoreError
from .atomic import pid_alive

try:  # POSIX; elsewhere the pid in the file is all there is
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

__all__ = ["WriterLock", "read_lock"]

_HELD: weakref.WeakSet[WriterLock] = weakref.WeakSet()
_HELD_GUARD = threading.Lock()


def read_lock(path: str | os.PathLike) -> dict[str, Any] | None:
    """The writer recorded in the lock file at ``path``, or None when there is none (or unreadable)."""
    try:
        record = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def _describe(record: dict[str, Any] | None) -> str:
    if not record:
        return "another process (its lock file is being written)"
    command = record.get("command")
    tail = f" ({command})" if command else ""
    return f"process {record.get('pid')} on {record.get('host')}, started {record.get('started')}{tail}"


def _ours(record: dict[str, Any] | None) -> bool:
    return bool(record) and record.get("pid") == os.getpid() and record.get("host") == socket.gethostname()


class WriterLock:
    """The exclusive writer lock of the store at ``store`` (see the module docstring).

    ``WriterLock(store).acquire()`` raises :class:`StoreError` naming the current writer when
    the store is being written by another live process (or by another open writer of this
    process). Use as a context manager or call :meth:`release`.
    """

    def __init__(self, store: str | os.PathLike, lock_path: str | os.PathLike) -> None:
        self.store = Path(store)
        self.path = Path(lock_path)
        self._fd: int | None = None
        self._finalizer: weakref.finalize | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self) -> WriterLock:
        """Take the lock (creating the lock file and its folder if needed); returns self."""
        if self._fd is not None:
            return self
        self.path.parent.mkdir(parents=True, exist_ok=True)
        collected = False
        for _ in range(20):
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0), 0o666)
            try:
                if not self._lock_fd(fd):
                    record = read_lock(self.path)
                    if not collected and _ours(record):
                        # Held by this process: maybe by a writer nobody references any more
                        # (a failed run's store in a reference cycle); collecting releases it.
                        collected = True
                        os.close(fd)
                        gc.collect()
                        continue
                    raise self._refusal(record)
                try:
                    same = os.path.samestat(os.fstat(fd), os.stat(self.path, follow_symlinks=False))
                except FileNotFoundError:
                    same = False
                if not same:  # released and unlinked between our open and our flock: again
                    os.close(fd)
                    continue
                previous = read_lock(self.path)
                if previous and previous.get("host") != socket.gethostname():
                    raise self._refusal(previous, other_host=True)
                self._write_record(fd)
            except BaseException:
                if fd is not None:
                    try:
                        os.close(fd)
                    except OSError:
                        pass
                raise
            self._fd = fd
            self._finalizer = weakref.finalize(self, _release_fd, fd, str(self.path))
            with _HELD_GUARD:
                _HELD.add(self)
            return self
        raise StoreError(f"cannot lock {self.store} for writing: its lock file {self.path} keeps changing")

    def _lock_fd(self, fd: int) -> bool:
        if fcntl is None:  # pragma: no cover - no flock: trust a live pid in the file
            record = read_lock(self.path)
            return not (record and record.get("pid") != os.getpid() and pid_alive(int(record.get("pid", 0))))
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        return True

    def _refusal(self, record: dict[str, Any] | None, other_host: bool = False) -> StoreError:
        who = _describe(record)
        if other_host:
            return StoreError(
                f"{self.store} is locked for writing by {who}, which cannot be checked from this host; "
                f"wait for it to finish, or if it is no longer running remove {self.path}"
            )
        if _ours(record):
            who = "another open writer of this process"
        return StoreError(
            f"{self.store} is being written by {who}; only one writer at a time is allowed. "
            f"Wait for it to finish (or stop it), or write to another path"
        )

    def _write_record(self, fd: int) -> None:
        record = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "started": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "command": " ".join(os.path.basename(a) if i == 0 else a for i, a in enumerate(sys.argv))[:300],
        }
        data = json.dumps(record).encode()
        os.ftruncate(fd, 0)
        os.pwrite(fd, data, 0)
        os.fsync(fd)

    def release(self) -> None:
        """Remove the lock file and drop the lock; does nothing when not held."""
        if self._fd is None:
            return
        if self._finalizer is not None:
            self._finalizer.detach()
        _release_fd(self._fd, str(self.path))
        self._fd = None
        with _HELD_GUARD:
            _HELD.discard(self)

    def __enter__(self) -> WriterLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()

    def __repr__(self) -> str:
        return f"WriterLock({str(self.store)!r}, held={self.held})"


def _release_fd(fd: int, path: str) -> None:
    try:
        if os.path.samestat(os.fstat(fd), os.stat(path, follow_symlinks=False)):
            os.unlink(path)
    except OSError:
        pass
    try:
        os.close(fd)
    except OSError:
        pass


@atexit.register
def _release_all() -> None:
    with _HELD_GUARD:
        held = list(_HELD)
    for lock in held:
        lock.release()
