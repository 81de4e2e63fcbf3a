"""Write files and directories under a temporary name, then rename them into place.

A reader (napari, QuPath, a second process) must never see a half-written export under
its final name, and a failed or cancelled export must leave nothing behind. Every writer
therefore works on a hidden sibling ``.<name>.tmp-<host>-<pid>-<random>`` in the target's own
folder (same file system, so the final :func:`os.replace` is atomic) and only renames it once
the content is complete. Temporaries are created with the usual permissions (``0666``/``0777``
less the umask), so the renamed file has the mode any other new file would have.

A process killed outright (``kill -9``, power loss) leaves its temporary behind; the next
export to the same target removes the temporaries of that target whose process (on this
host) is gone.
"""

from __future__ import annotations

import hashlib
import os
import secrets
import shutil
import socket
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from ..errors import ExportError
from .ownership import check_replaceable_export

__all__ = ["check_target", "atomic_path", "atomic_paths", "remove_path", "make_temporary", "remove_stale_temporaries"]

_HOST_TAG = hashlib.sha256(socket.gethostname().encode()).hexdigest()[:8]


def check_target(target: str | os.PathLike, *, overwrite: bool = False) -> Path:
    """Return ``target`` as an absolute path after checking that it may be written.

    Raises :class:`ExportError` when the target exists and ``overwrite`` is false, when it
    exists and is not an export of ours (see :mod:`.ownership`), when its folder does not
    exist, or when the folder is not writable.
    """
    path = Path(target).expanduser().absolute()
    if path.exists() or path.is_symlink():
        if not overwrite:
            raise ExportError(
                f"{path} already exists; choose another name or pass overwrite=True (--overwrite on the command line)"
            )
        check_replaceable_export(path)
    parent = path.parent
    if not parent.is_dir():
        raise ExportError(f"cannot write {path}: the folder {parent} does not exist")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise ExportError(f"cannot write {path}: the folder {parent} is not writable")
    return path


def remove_path(path: Path) -> None:
    """Remove a file or a folder tree if it exists; never raises for a missing path."""
    try:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
    except OSError:
        pass


def _temporary_prefix(target: Path) -> str:
    return f".{target.name}.tmp-"


def make_temporary(target: Path, directory: bool) -> Path:
    """Create an empty hidden sibling of ``target`` (a folder if ``directory``), honouring the umask."""
    prefix = f"{_temporary_prefix(target)}{_HOST_TAG}-{os.getpid()}-"
    for _ in range(100):
        path = target.parent / f"{prefix}{secrets.token_hex(4)}"
        try:
            if directory:
                os.mkdir(path, 0o777)
            else:
                os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o666))
            return path
        except FileExistsError:
            continue
        except OSError as exc:
            raise ExportError(f"cannot write {target}: {exc.strerror or exc}") from exc
    raise ExportError(f"cannot write {target}: no free temporary name next to it")


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` of this host may still run. Only a definite "no such process"
    counts as dead: a stale lock is taken over, or a temporary removed, only then."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # EPERM (another user's live process) or anything unclear: assume alive
        return True
    return True


def remove_stale_temporaries(target: str | os.PathLike) -> list[Path]:
    """Remove the temporaries of ``target`` left by dead processes of this host; returns them."""
    target = Path(target)
    removed = []
    for marker in (_temporary_prefix(target), f".{target.name}.old-"):
        try:
            candidates = list(target.parent.glob(f"{marker}*"))
        except OSError:
            return removed
        for path in candidates:
            host, _, rest = path.name[len(marker) :].partition("-")
            pid_text = rest.partition("-")[0]
            if host != _HOST_TAG or not pid_text.isdigit() or pid_alive(int(pid_text)):
                continue
            remove_path(path)
            removed.append(path)
    return removed


def _commit(temporary: Path, target: Path, overwrite: bool) -> None:
    """Move ``temporary`` to ``target``, replacing an existing target only if allowed."""
    if not (target.exists() or target.is_symlink()):
        os.replace(temporary, target)
        return
    if not overwrite:
        raise ExportError(f"{target} appeared while exporting; it was left untouched")
    if target.is_dir() and not target.is_symlink():
        # os.replace cannot replace a non-empty folder: move the old one aside first.
        aside = target.parent / f".{target.name}.old-{_HOST_TAG}-{os.getpid()}-{secrets.token_hex(4)}"
        os.replace(target, aside)
        try:
            os.replace(temporary, target)
        except BaseException:
            os.replace(aside, target)
            raise
        remove_path(aside)
    else:
        os.replace(temporary, target)


@contextmanager
def atomic_path(target: str | os.PathLike, *, directory: bool = False, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary sibling of ``target``; rename it to ``target`` on success.

    With ``directory=True`` the temporary is an empty folder, otherwise an empty file.
    On any exception (including :class:`~napari_diffinfinite.progress.Cancelled` and
    ``KeyboardInterrupt``) the temporary is removed and the exception propagates, so
    nothing is left under either name.
    """
    with atomic_paths([target], directory=[directory], overwrite=overwrite) as (tmp,):
        yield tmp


@contextmanager
def atomic_paths(
    targets: Sequence[str | os.PathLike],
    *,
    directory: Sequence[bool] | None = None,
    overwrite: bool = False,
) -> Iterator[list[Path]]:
    """Like :func:`atomic_path` for several outputs written together (image + labels).

    All targets are renamed into place only after the block succeeds; if one rename
    fails, the ones already renamed are removed again.
    """
    paths = [check_target(t, overwrite=overwrite) for t in targets]
    if len(set(paths)) != len(paths):
        raise ExportError(f"two outputs of one export have the same name: {paths}")
    kinds = list(directory) if directory is not None else [False] * len(paths)
    temporaries: list[Path] = []
    for path in paths:
        remove_stale_temporaries(path)
    try:
        for path, is_dir in zip(paths, kinds):
            temporaries.append(make_temporary(path, is_dir))
        yield list(temporaries)
    except BaseException:
        for tmp in temporaries:
            remove_path(tmp)
        raise
    committed: list[Path] = []
    try:
        for tmp, path in zip(temporaries, paths):
            _commit(tmp, path, overwrite)
            committed.append(path)
    except BaseException as exc:
        for tmp in temporaries:
            remove_path(tmp)
        for path in committed:
            remove_path(path)
        if isinstance(exc, OSError):
            raise ExportError(f"cannot move the export into place: {exc}") from exc
        raise
