"""Write files and directories under a temporary name, then rename them into place.

A reader (napari, QuPath, a second process) must never see a half-written export under
its final name, and a failed or cancelled export must leave nothing behind. Every writer
therefore works on a sibling ``<name>.tmp-XXXXXXXX`` in the target's own folder (same
file system, so the final :func:`os.replace` is atomic) and only renames it once the
content is complete.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from ..errors import ExportError

__all__ = ["check_target", "atomic_path", "atomic_paths", "remove_path"]


def check_target(target: str | os.PathLike, *, overwrite: bool = False) -> Path:
    """Return ``target`` as an absolute path after checking that it may be written.

    Raises :class:`ExportError` when the target exists and ``overwrite`` is false, when
    its folder does not exist, or when the folder is not writable.
    """
    path = Path(target).expanduser().absolute()
    if path.exists() or path.is_symlink():
        if not overwrite:
            raise ExportError(
                f"{path} already exists; choose another name or pass overwrite=True "
                "(--overwrite on the command line)"
            )
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


def _make_temporary(target: Path, directory: bool) -> Path:
    prefix = f"{target.name}.tmp-"
    try:
        if directory:
            return Path(tempfile.mkdtemp(prefix=prefix, dir=target.parent))
        fd, name = tempfile.mkstemp(prefix=prefix, dir=target.parent)
        os.close(fd)
        return Path(name)
    except OSError as exc:
        raise ExportError(f"cannot write {target}: {exc.strerror or exc}") from exc


def _commit(temporary: Path, target: Path, overwrite: bool) -> None:
    """Move ``temporary`` to ``target``, replacing an existing target only if allowed."""
    if not (target.exists() or target.is_symlink()):
        os.replace(temporary, target)
        return
    if not overwrite:
        raise ExportError(f"{target} appeared while exporting; it was left untouched")
    if target.is_dir() and not target.is_symlink():
        # os.replace cannot replace a non-empty folder: move the old one aside first.
        aside = Path(tempfile.mkdtemp(prefix=f"{target.name}.old-", dir=target.parent))
        aside.rmdir()
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
def atomic_path(
    target: str | os.PathLike, *, directory: bool = False, overwrite: bool = False
) -> Iterator[Path]:
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
    try:
        for path, is_dir in zip(paths, kinds):
            temporaries.append(_make_temporary(path, is_dir))
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
