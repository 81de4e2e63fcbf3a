"""generate-many: manifests, a LocalCluster of workers, a killed worker, a slide that fails alone."""

from __future__ import annotations

import json
import os
import signal
import threading
import time

import numpy as np
import pytest
from PIL import Image

from napari_diffinfinite import engine
from napari_diffinfinite.commands.generate_many import read_manifest
from napari_diffinfinite.errors import SettingsError
from napari_diffinfinite.slide.store import SlideStore

distributed = pytest.importorskip("distributed")


def _write_csv(path, header, rows):
    path.write_text("\n".join([",".join(header), *[",".join(map(str, r)) for r in rows]]) + "\n")
    return path


def test_csv_manifest_rows_become_generate_requests(tmp_path, tiny_image_model_dir):
    manifest = _write_csv(
        tmp_path / "slides.csv",
        ["out", "size", "seed", "steps", "omega", "label", "model", "keep-state"],
        [["a.zarr", "256x128", 3, 2, "", 1, tiny_image_model_dir, "true"], ["b.zarr", "", "", "", 1.5, 2, "", ""]],
    )
    a, b = read_manifest(manifest)
    assert a.path == tmp_path / "a.zarr" and a.size == (128, 256) and a.settings.seed == 3 and a.settings.steps == 2
    assert a.settings.omega is None and a.layout.label == 1 and str(a.image_model) == str(tiny_image_model_dir)
    assert a.keep_state and not b.keep_state
    # blank cells take generate's defaults
    assert b.size == (2048, 2048) and b.settings.seed is None and b.settings.omega == 1.5 and b.image_model is None


def test_json_manifest_and_every_bad_row_reported(tmp_path):
    good = tmp_path / "good.json"
    good.write_text(json.dumps([{"out": "x.zarr", "size": "128", "label": 1}]))
    (request,) = read_manifest(good)
    assert request.size == (128, 128)
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps([{"out": "x.zarr", "colour": "red"}, {"out": "y.zarr", "seed": "many"}, {"size": "64"}]))
    with pytest.raises(SettingsError) as info:
        read_manifest(bad)
    message = str(info.value)
    assert "3 bad row(s)" in message
    assert "row 1: unknown column 'colour'" in message
    assert "row 2:" in message and "many" in message
    assert "row 3:" in message and "--out" in message


def _requests(tmp_path, model_dir, seeds, **extra):
    return [
        engine.GenerateRequest(
            out=tmp_path / f"slide{seed}.zarr",
            size=(256, 256),
            image_model=str(model_dir),
            layout=engine.LayoutSource(label=1 + seed % 2),
            settings=engine.GenerateSettings(seed=seed, steps=4, checkpoint_every_s=0, device="cpu"),
            **extra,
        )  # fmt: skip
        for seed in seeds
    ]


def _reference(request, folder):
    from dataclasses import replace

    store = engine.run_generate(replace(request, out=folder / request.path.name))
    return np.asarray(store.image_level(0)[...])


def _level0(path):
    return np.asarray(SlideStore.open(path).image_level(0)[...])


def _sampling_step(path) -> int:
    try:
        state = SlideStore.open(path).load_state()
    except Exception:  # noqa: BLE001 - the store is being created
        return -1
    return -1 if state is None else int(state[1].get("step", -1))


@pytest.mark.slow
def test_local_cluster_survives_a_worker_killed_mid_slide(tmp_path, tiny_image_model_dir):
    from napari_diffinfinite.fleet import generate_many

    requests = _requests(tmp_path, tiny_image_model_dir, seeds=(1, 2, 3))
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, dashboard_address=None) as cluster:
        result = {}
        runner = threading.Thread(
            target=lambda: result.update(report=generate_many(requests, scheduler=cluster.scheduler_address))
        )
        runner.start()
        killed = None
        # Keep this second client open until generate_many returns: closing it while the
        # other client waits in as_completed made that wait miss finished tasks about one run
        # in four on a loaded 2-core machine (every task in memory on the scheduler, the
        # waiting thread never woken; dask.distributed with two clients in one process).
        client = distributed.Client(cluster.scheduler_address)
        try:
            deadline = time.monotonic() + 120
            while killed is None and time.monotonic() < deadline and runner.is_alive():
                for worker, keys in client.processing().items():
                    for key in keys:
                        index = int(str(key).split("-")[1])
                        path = requests[index].path
                        if _sampling_step(path) >= 1 and not SlideStore.open(path).provenance.get("complete"):
                            pid = client.run(os.getpid, workers=[worker])[worker]
                            os.kill(pid, signal.SIGKILL)
                            killed = path
                            break
                    if killed:
                        break
                time.sleep(0.05)
            runner.join(timeout=600)
        finally:
            client.close()
    assert killed is not None, "no slide was caught mid-sampling"
    report = result["report"]
    assert report.failed == [] and report.done == [r.path for r in requests], report.summary()
    references = tmp_path / "reference"
    references.mkdir()
    for request in requests:
        store = SlideStore.open(request.path)
        assert store.provenance.get("complete") is True
        got, want = _level0(request.path), _reference(request, references)
        # worker and test process may use different thread counts: batched convolutions round differently
        difference = np.abs(got.astype(int) - want.astype(int))
        where = f"{request.path.name} ({'killed mid-slide' if request.path == killed else 'not killed'})"
        assert difference.max() <= 2 and (difference > 0).mean() < 1e-3, where


@pytest.mark.slow
def test_a_row_with_a_bad_mask_fails_alone(tmp_path, tiny_image_model_dir):
    bad_mask = tmp_path / "bad_mask.png"
    Image.fromarray(np.full((8, 8), 7, np.uint8)).save(bad_mask)  # class 7: the model has 3
    manifest = _write_csv(
        tmp_path / "slides.csv",
        ["out", "size", "steps", "model", "label", "mask"],
        [
            ["good.zarr", "256x256", 2, tiny_image_model_dir, 1, ""],
            ["bad.zarr", "256x256", 2, tiny_image_model_dir, "", bad_mask],
        ],
    )
    from napari_diffinfinite.cli import main

    assert main(["generate-many", str(manifest), "--workers", "1", "-q"]) == 1
    assert SlideStore.open(tmp_path / "good.zarr").provenance.get("complete") is True
    assert not (tmp_path / "bad.zarr").exists()


def test_bad_mask_message_names_the_slide_and_the_class(tmp_path, tiny_image_model_dir):
    from napari_diffinfinite.fleet import generate_one

    bad_mask = tmp_path / "bad_mask.png"
    Image.fromarray(np.full((8, 8), 7, np.uint8)).save(bad_mask)
    request = engine.GenerateRequest(
        out=tmp_path / "bad.zarr", size=(256, 256), image_model=str(tiny_image_model_dir),
        layout=engine.LayoutSource(mask=bad_mask), settings=engine.GenerateSettings(steps=1, device="cpu"),
    )  # fmt: skip
    outcome = generate_one(request)
    assert not outcome.ok and outcome.out == tmp_path / "bad.zarr" and "7" in outcome.error


def test_a_manifest_that_is_not_utf8_csv_is_one_message(tmp_path):
    from napari_diffinfinite.commands.generate_many import read_rows
    from napari_diffinfinite.errors import SettingsError

    manifest = tmp_path / "m.csv"
    manifest.write_bytes(b"out,size\n\xff\xfe.zarr,512\n")
    with pytest.raises(SettingsError, match="not a UTF-8 CSV"):
        read_rows(manifest)
    deep = tmp_path / "m.json"
    deep.write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(SettingsError, match="not valid JSON"):
        read_rows(deep)


def test_two_rows_into_one_store_are_refused_before_anything_runs(tmp_path):
    """A duplicate out ran one slide and failed the other at run time."""
    manifest = tmp_path / "m.json"
    manifest.write_text(json.dumps([{"out": "x.zarr", "label": 1}, {"out": "./x.zarr", "label": 2}]))
    with pytest.raises(SettingsError, match="row 2: out .* is also row 1's"):
        read_manifest(manifest)
