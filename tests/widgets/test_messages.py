"""Messages for the window, not the command line (pure: runs without napari)."""

from __future__ import annotations

import errno

from napari_diffinfinite.errors import StoreError
from napari_diffinfinite.widgets._messages import fresh_path, gui_message


def test_no_raw_exception_names():
    exists = FileExistsError(errno.EEXIST, "File exists", "/data/slide.zarr")
    assert gui_message(exists) == "/data/slide.zarr already exists: choose another name or allow overwriting"
    assert "Errno" not in gui_message(PermissionError(errno.EACCES, "Permission denied", "/root/x"))
    assert gui_message(ValueError("draw a rectangle first")) == "Draw a rectangle first"
    assert gui_message(StoreError("the store is damaged; generate it anew")) == "the store is damaged; generate it anew"
    assert "ValueError" not in gui_message(ValueError(""))


def test_fresh_path_keeps_the_suffix(tmp_path):
    assert fresh_path(tmp_path / "slide.zarr") == tmp_path / "slide.zarr"
    (tmp_path / "slide.zarr").mkdir()
    (tmp_path / "slide-2.zarr").mkdir()
    assert fresh_path(tmp_path / "slide.zarr") == tmp_path / "slide-3.zarr"
    (tmp_path / "region.ome.tif").touch()
    assert fresh_path(tmp_path / "region.ome.tif") == tmp_path / "region-2.ome.tif"
