"""Store safety: one writer per store, --overwrite deletes only what this tool wrote, exports
are atomic, leave no stale temporaries and honour the umask (issue 8 items 2, 3, 9; issue 9 item 4).
"""

from __future__ import annotations

import gc
import json
import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import tifffile
import zarr

from napari_diffinfinite.errors import ExportError, StoreError
from napari_diffinfinite.slide import ngff
from napari_diffinfinite.slide.atomic import make_temporary
from napari_diffinfinite.slide.export import export_slide
from napari_diffinfinite.slide.lock import read_lock
from napari_diffinfinite.slide.masks import ConstantMask
from napari_diffinfinite.slide.store import SlideStore

NAMES = ["unknown", "tumour", "stroma"]
COLORS = [(0, 0, 0), (200, 30, 30), (30, 200, 30)]
SHAPE = (300, 400)


def create(path: Path, **kwargs) -> SlideStore:
    kwargs.setdefault("provenance", {"seed": 1})
    return SlideStore.create(path, SHAPE, class_names=NAMES, class_colors=COLORS, pixel_size_um=0.5, **kwargs)


def finished(path: Path) -> Path:
    """A complete small store (image tile, labels), closed."""
    store = create(path)
    store.write_tile(0, 0, np.full((3, *SHAPE), 120, np.uint8))
    store.write_labels(ConstantMask(1, SHAPE))
    store.mark_complete()
    return path


def lock_file(path: Path) -> Path:
    return path / "diffinfinite" / "writer.lock"


def dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


HOLD_SCRIPT = textwrap.dedent(
    """
    import sys
    from napari_diffinfinite.slide.store import SlideStore
    store = SlideStore.open(sys.argv[1], mode="r+")
    print("locked", flush=True)
    sys.stdin.read()
    """
)


@pytest.fixture
def other_writer(tmp_path):
    """Another process holding ``tmp_path/slide.zarr`` open for writing (until the test ends)."""
    path = finished(tmp_path / "slide.zarr")
    child = subprocess.Popen(
        [sys.executable, "-c", HOLD_SCRIPT, str(path)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    assert child.stdout.readline().strip() == "locked"
    yield path, child
    if child.poll() is None:
        child.kill()
    child.wait()


# --------------------------------------------------------------------------- one writer


def test_second_writer_in_another_process_is_refused_naming_the_first(other_writer):
    path, child = other_writer
    with pytest.raises(StoreError, match=rf"being written by process {child.pid} on {socket.gethostname()}"):
        SlideStore.open(path, mode="r+")
    with pytest.raises(StoreError, match=f"process {child.pid}"):
        create(path, overwrite=True)
    assert SlideStore.open(path).provenance["complete"] is True  # the overwrite deleted nothing


def test_readers_are_unaffected_by_a_writer(other_writer):
    path, _ = other_writer
    reader = SlideStore.open(path, mode="r")
    assert (reader.read_region(0, 0, 10, 0, 10) == 120).all()


def test_lock_of_a_killed_writer_is_taken_over(other_writer):
    path, child = other_writer
    child.send_signal(signal.SIGKILL)
    child.wait()
    assert read_lock(lock_file(path))["pid"] == child.pid  # left behind by kill -9
    store = SlideStore.open(path, mode="r+")
    assert read_lock(lock_file(path))["pid"] == os.getpid()
    store.close()
    assert not lock_file(path).exists()


def test_stale_lock_file_of_a_dead_process_is_taken_over(tmp_path):
    path = finished(tmp_path / "slide.zarr")
    record = {"pid": dead_pid(), "host": socket.gethostname(), "started": "2026-01-01T00:00:00+00:00"}
    lock_file(path).write_text(json.dumps(record))
    with SlideStore.open(path, mode="r+") as store:
        store.update_provenance(resumed=True)
        assert read_lock(lock_file(path))["pid"] == os.getpid()
    assert SlideStore.open(path).provenance["resumed"] is True


def test_lock_from_another_host_is_refused_with_the_way_out(tmp_path):
    path = finished(tmp_path / "slide.zarr")
    lock_file(path).write_text(json.dumps({"pid": 1, "host": "elsewhere.example", "started": "2026-01-01"}))
    with pytest.raises(StoreError, match=r"process 1 on elsewhere\.example.*remove .*writer\.lock"):
        SlideStore.open(path, mode="r+")
    assert read_lock(lock_file(path))["host"] == "elsewhere.example"


def test_second_writer_in_the_same_process_is_refused(tmp_path):
    store = create(tmp_path / "slide.zarr")
    with pytest.raises(StoreError, match="another open writer of this process"):
        SlideStore.open(store.path, mode="r+")
    store.close()
    SlideStore.open(store.path, mode="r+").close()


def test_lock_is_released_on_complete_close_exit_and_garbage_collection(tmp_path):
    store = create(tmp_path / "a.zarr")
    assert read_lock(lock_file(store.path))["pid"] == os.getpid()
    store.mark_complete()
    assert not lock_file(store.path).exists() and not store.writable
    with pytest.raises(StoreError, match="read-only"):
        store.update_provenance(x=1)

    with pytest.raises(RuntimeError):
        with create(tmp_path / "b.zarr") as other:
            raise RuntimeError("generation failed")
    assert not lock_file(other.path).exists()
    SlideStore.open(other.path, mode="r+").close()  # free for a resume

    dropped = create(tmp_path / "c.zarr")
    path = dropped.path
    del dropped
    gc.collect()
    SlideStore.open(path, mode="r+").close()


def test_unreachable_writer_of_this_process_does_not_block_a_new_one(tmp_path):
    gc.disable()
    try:
        store = create(tmp_path / "slide.zarr")
        store.itself = store  # a reference cycle: freed only by the cycle collector
        path = store.path
        del store
        SlideStore.open(path, mode="r+").close()
    finally:
        gc.enable()


def test_failed_create_leaves_nothing_and_no_lock(tmp_path, monkeypatch):
    def broken(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(ngff, "write_ome_xml", broken)
    with pytest.raises(StoreError, match="No space left"):
        create(tmp_path / "slide.zarr")
    assert list(tmp_path.iterdir()) == []


def test_concurrent_creates_one_wins_and_completes(tmp_path):
    path = tmp_path / "slide.zarr"
    script = textwrap.dedent(
        """
        import sys, numpy as np
        from napari_diffinfinite.slide.store import SlideStore
        store = SlideStore.create(sys.argv[1], (300, 400), class_names=["u", "a"], class_colors=[(0, 0, 0), (9, 9, 9)],
                                  provenance={"run": "first"})
        print("created", flush=True)
        sys.stdin.readline()
        store.write_tile(0, 0, np.full((3, 300, 400), 77, np.uint8))
        store.mark_complete()
        """
    )
    first = subprocess.Popen(
        [sys.executable, "-c", script, str(path)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert first.stdout.readline().strip() == "created"
        with pytest.raises(StoreError, match=f"process {first.pid}"):
            create(path, overwrite=True, provenance={"run": "second"})
        first.stdin.write("go\n")
        first.stdin.flush()
        assert first.wait(60) == 0
    finally:
        if first.poll() is None:
            first.kill()
    done = SlideStore.open(path)
    assert done.provenance["run"] == "first" and done.provenance["complete"] is True
    assert (done.read_region(0, 0, 300, 0, 400) == 77).all()


# --------------------------------------------------------------------------- --overwrite of stores


def test_overwrite_of_a_user_folder_with_a_zarr_group_is_refused(tmp_path):
    folder = tmp_path / "work"
    zarr.open_group(folder, mode="w", zarr_format=2)
    (folder / "thesis.tex").write_text("\\chapter{Results}")
    with pytest.raises(StoreError, match="refusing to overwrite .*not written by this tool"):
        create(folder, overwrite=True)
    assert (folder / "thesis.tex").read_text() == "\\chapter{Results}"


def test_overwrite_of_our_store_holding_a_user_file_is_refused(tmp_path):
    path = finished(tmp_path / "slide.zarr")
    (path / "notes.txt").write_text("mine")
    with pytest.raises(StoreError, match="holds files this tool did not write: notes.txt"):
        create(path, overwrite=True)
    assert (path / "notes.txt").read_text() == "mine"
    assert SlideStore.open(path).provenance["complete"] is True


@pytest.mark.parametrize(
    "user_file",
    ["labels/my_annotations.geojson", "0/precious.txt", "diffinfinite/notes.txt", "labels/manual/x.txt",
     "2024/report.txt", "0/0/extra/f", "diffinfinite/state_1/notes.txt"],
)  # fmt: skip
def test_overwrite_of_our_store_holding_a_user_file_anywhere_inside_is_refused(tmp_path, user_file):
    """Only the top level was checked: a label image a user added under labels/ (normal
    napari / ome-zarr practice) or a file in a level folder was deleted by --overwrite."""
    path = finished(tmp_path / "slide.zarr")
    target = (path / user_file).resolve()
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text("mine")
    with pytest.raises(StoreError, match="holds files this tool did not write: "):
        create(path, overwrite=True)
    assert target.read_text() == "mine"
    assert SlideStore.open(path).provenance["complete"] is True


def test_overwrite_through_a_symlink_is_refused(tmp_path):
    real = finished(tmp_path / "real.zarr")
    link = tmp_path / "link.zarr"
    link.symlink_to(real, target_is_directory=True)
    with pytest.raises(StoreError, match="symbolic link"):
        create(link, overwrite=True)
    assert SlideStore.open(real).provenance["complete"] is True


def test_overwrite_never_follows_a_symlink_inside_the_store(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "data.txt").write_text("keep")
    path = finished(tmp_path / "slide.zarr")
    (path / "labels" / "escape").symlink_to(outside, target_is_directory=True)
    with pytest.raises(StoreError, match="labels/escape \\(a symbolic link\\)"):
        create(path, overwrite=True)
    assert (outside / "data.txt").read_text() == "keep"


def test_overwrite_of_a_plain_file_is_refused(tmp_path):
    path = tmp_path / "slide.zarr"
    path.write_text("not a store")
    with pytest.raises(StoreError, match="it is a file"):
        create(path, overwrite=True)
    assert path.read_text() == "not a store"


def test_overwrite_of_our_own_store_replaces_it(tmp_path):
    path = finished(tmp_path / "slide.zarr")
    with create(path, overwrite=True, provenance={"seed": 2}) as store:
        assert store.provenance["seed"] == 2 and store.provenance["complete"] is False
        assert (store.read_region(0, 0, 10, 10, 20) == 0).all()  # the old pixels are gone
    assert not lock_file(path).exists()


def test_overwrite_of_an_empty_folder_is_allowed(tmp_path):
    folder = tmp_path / "empty.zarr"
    folder.mkdir()
    create(folder, overwrite=True).close()
    assert SlideStore.open(folder).shape == SHAPE


def test_a_store_is_not_an_export_and_an_export_is_not_a_store(tmp_path):
    store_path = finished(tmp_path / "slide.zarr")
    export = tmp_path / "region.zarr"
    export_slide(store_path, export, "ome-zarr")
    with pytest.raises(ExportError, match="is a slide store, not an export"):
        export_slide(store_path, store_path, "ome-zarr", overwrite=True)
    with pytest.raises(StoreError, match="is an export, not a slide store"):
        create(export, overwrite=True)


# --------------------------------------------------------------------------- --overwrite of exports


@pytest.mark.parametrize(
    "fmt, name", [("ome-zarr", "out.zarr"), ("ome-tiff", "out.ome.tif"), ("geojson", "out.geojson")]
)
def test_export_overwrite_replaces_our_own_export(tmp_path, fmt, name):
    source = finished(tmp_path / "slide.zarr")
    out = tmp_path / name
    export_slide(source, out, fmt, region=(0, 0, 100, 100))
    result = export_slide(source, out, fmt, overwrite=True)
    assert result.region == (0, 0, 400, 300)


@pytest.mark.parametrize(
    "name, make",
    [
        ("out.tif", lambda p: tifffile.imwrite(p, np.zeros((8, 8), np.uint8))),
        ("out.geojson", lambda p: p.write_text(json.dumps({"type": "FeatureCollection", "features": []}))),
        ("out.zarr", lambda p: (p.mkdir(), (p / "thesis.tex").write_text("x"))),
    ],
)
def test_export_overwrite_of_something_else_is_refused(tmp_path, name, make):
    source = finished(tmp_path / "slide.zarr")
    out = tmp_path / name
    make(out)
    before = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*"))
    fmt = {"out.tif": "tiff", "out.geojson": "geojson", "out.zarr": "ome-zarr"}[name]
    with pytest.raises(ExportError, match="refusing to overwrite"):
        export_slide(source, out, fmt, overwrite=True)
    assert sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*")) == before


def test_export_overwrite_through_a_symlink_is_refused(tmp_path):
    source = finished(tmp_path / "slide.zarr")
    mine = tmp_path / "mine.geojson"
    export_slide(source, mine, "geojson")
    link = tmp_path / "link.geojson"
    link.symlink_to(mine)
    with pytest.raises(ExportError, match="symbolic link"):
        export_slide(source, link, "geojson", overwrite=True)
    assert link.is_symlink()


# --------------------------------------------------------------------------- temporaries and modes


def test_stale_temporaries_of_the_target_are_removed(tmp_path):
    source = finished(tmp_path / "slide.zarr")
    out = tmp_path / "out.ome.tif"
    live = make_temporary(out, directory=False)  # this process: still running, kept
    stale_file = live.with_name(live.name.replace(f"-{os.getpid()}-", f"-{dead_pid()}-"))
    stale_file.write_bytes(b"half a tiff")
    stale_dir = make_temporary(out, directory=True)
    stale_dir = stale_dir.rename(stale_dir.with_name(stale_dir.name.replace(f"-{os.getpid()}-", f"-{dead_pid()}-")))
    (stale_dir / "0").mkdir()
    other = tmp_path / f".other.tif.tmp-{stale_file.name.split('-')[1]}-{dead_pid()}-abcd"
    other.write_bytes(b"another target's")
    export_slide(source, out, "ome-tiff")
    assert not stale_file.exists() and not stale_dir.exists()
    assert live.exists() and other.exists()


@pytest.mark.parametrize("mask", [0o022, 0o077, 0o002])
def test_exports_honour_the_umask(tmp_path, mask):
    source = finished(tmp_path / "slide.zarr")
    old = os.umask(mask)
    try:
        export_slide(source, tmp_path / "a.ome.tif", "ome-tiff")
        export_slide(source, tmp_path / "a.geojson", "geojson")
        export_slide(source, tmp_path / "a.zarr", "ome-zarr")
    finally:
        os.umask(old)
    for name in ("a.ome.tif", "a.labels.ome.tif", "a.geojson"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o666 & ~mask, name
    assert stat.S_IMODE((tmp_path / "a.zarr").stat().st_mode) == 0o777 & ~mask


def _with_state(path: Path) -> Path:
    store = create(path)
    store.save_state({"latent": np.arange(12, dtype=np.float32).reshape(3, 4)}, {"step": 1})
    store.close()
    return path


def _edit_pointer(path: Path, **changes) -> None:
    pointer_file = path / "diffinfinite" / "state.json"
    pointer = json.loads(pointer_file.read_text())
    pointer.update(changes)
    pointer_file.write_text(json.dumps(pointer))


def test_resume_state_never_reads_outside_the_store(tmp_path):
    """The pointer's slot and array names were used as paths: "slot": "../../victim" resumed
    from a file outside the store."""
    path = _with_state(tmp_path / "slide.zarr")
    victim = tmp_path / "victim"
    victim.mkdir()
    np.save(victim / "latent.npy", np.ones((3, 4), np.float32))
    _edit_pointer(path, slot="../../victim")
    with pytest.raises(StoreError, match="state slot"):
        SlideStore.open(path).load_state()
    pointer = json.loads((path / "diffinfinite" / "state.json").read_text())
    _edit_pointer(path, slot="state_0", arrays={"../../../victim/latent": pointer["arrays"]["latent"]})
    with pytest.raises(StoreError, match="not a plain name"):
        SlideStore.open(path).load_state()


def test_resume_state_header_claiming_terabytes_is_refused_before_allocating(tmp_path):
    path = _with_state(tmp_path / "slide.zarr")
    slot = json.loads((path / "diffinfinite" / "state.json").read_text())["slot"]
    huge = {"dtype": "<f4", "shape": [1_000_000, 1_000_000]}
    header = np.lib.format.header_data_from_array_1_0(np.zeros((1, 1), np.float32))
    header["shape"] = tuple(huge["shape"])
    with open(path / "diffinfinite" / slot / "latent.npy", "wb") as fh:
        np.lib.format.write_array_header_1_0(fh, header)
        fh.write(b"\0" * 64)
    _edit_pointer(path, arrays={"latent": huge})
    with pytest.raises(StoreError, match="header claims"):
        SlideStore.open(path).load_state()


def test_a_store_holding_a_link_is_not_opened_for_writing(tmp_path):
    """A symlinked state folder was followed on resume: the resume wrote into and deleted from
    the link's target."""
    path = _with_state(tmp_path / "slide.zarr")
    elsewhere = tmp_path / "elsewhere"
    shutil.move(path / "diffinfinite", elsewhere)
    (path / "diffinfinite").symlink_to(elsewhere, target_is_directory=True)
    before = sorted(p.name for p in elsewhere.iterdir())
    with pytest.raises(StoreError, match="symbolic links"):
        SlideStore.open(path, mode="r+")
    assert sorted(p.name for p in elsewhere.iterdir()) == before
