import json
import os

import numpy as np
import pytest
from PIL import Image

from napari_diffinfinite.cli import main
from napari_diffinfinite.slide.store import SlideStore


def test_generate_2048_with_tiny_model(tmp_path, tiny_image_model_dir, capsys):
    out = tmp_path / "slide.zarr"
    code = main(["generate", "--out", str(out), "--size", "2048x2048", "--model", str(tiny_image_model_dir),
                 "--label", "1", "--steps", "2", "--device", "cpu", "-q"])  # fmt: skip
    assert code == 0
    printed = capsys.readouterr().out
    assert f"napari {out}" in printed
    store = SlideStore.open(out)
    assert store.shape == (2048, 2048) and store.num_levels == 3 and store.provenance["complete"]
    assert (store.label_level(0)[::256, ::256] == 1).all()


def test_generate_from_label_image_and_info(tmp_path, tiny_image_model_dir, capsys):
    labels = np.zeros((20, 30), np.uint8)
    labels[:, 15:] = 2
    Image.fromarray(labels).save(tmp_path / "mask.png")
    out = tmp_path / "s.zarr"
    assert main(["generate", "--out", str(out), "--size", "600x400", "--model", str(tiny_image_model_dir),
                 "--mask", str(tmp_path / "mask.png"), "--steps", "1", "-q"]) == 0  # fmt: skip
    capsys.readouterr()
    assert main(["info", str(out), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert (
        info["size"] == "600x400" and info["complete"] is True and info["provenance"]["mask"]["type"] == "label image"
    )


def test_generate_errors_are_clear(tmp_path, tiny_image_model_dir, capsys):
    args = ["generate", "--out", str(tmp_path / "x.zarr"), "--size", "256x256", "--model", str(tiny_image_model_dir)]
    assert main(args) == 1
    assert "give a layout" in capsys.readouterr().err
    assert main([*args, "--label", "9"]) == 1
    assert "label 9 is not one of the model's classes" in capsys.readouterr().err
    assert main([*args, "--label", "1", "--size", "huge"]) == 1
    assert "WIDTHxHEIGHT" in capsys.readouterr().err


def test_resume_cli(tmp_path, tiny_image_model_dir):
    out = tmp_path / "r.zarr"
    base = [
        "generate",
        "--out",
        str(out),
        "--size",
        "300x300",
        "--model",
        str(tiny_image_model_dir),
        "--steps",
        "1",
        "-q",
    ]
    assert main([*base, "--label", "2"]) == 0
    assert main([*base, "--label", "2"]) == 1  # exists, needs --resume or --overwrite
    assert main([*base, "--resume"]) == 0  # resumes a complete store: nothing left to do


def test_convert_and_info(official_image_checkpoint, tmp_path, capsys):
    out = tmp_path / "converted"
    assert main(["convert", str(official_image_checkpoint), str(out), "--class-names", "unknown,tumour,stroma"]) == 0
    capsys.readouterr()
    assert main(["info", str(out), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["class_names"] == ["unknown", "tumour", "stroma"] and info["kind"] == "image"


def test_bench_json(capsys):
    assert main(["bench", "--json", "--sizes", "512,1024", "--dim", "8", "--steps", "1"]) == 0
    result = json.loads(capsys.readouterr().out)
    for key in ("evals_per_step", "ideal_evals_per_step", "speedup_vs_sequential", "peak_rss_mb"):
        assert key in result
    # the timed step 0 of 250 has no cell context; a step from the middle, timed too, has
    largest = result["sizes"][-1]
    assert largest["steps_with_context_per_run"] == 242 and largest["context_step"] == 125
    assert largest["context_evals_per_step"] >= largest["evals_per_step"]
    assert result["speedup_vs_sequential_per_run"] > 0 and result["speedup_vs_sequential_with_context"] > 0
    assert result["ideal_evals_per_step"] == 4.0 and result["evals_per_step"] <= 9.0
    assert result["sizes"][0]["evals_per_step"] == 1.0  # a one-patch canvas needs one evaluation
    # and its patch holds both labels: the unconditional pass and one per label, for the timed step only
    assert result["sizes"][0]["network_evals_per_step"] == 3.0


@pytest.mark.parametrize("argv", [["--version"], ["generate", "--help"]])
def test_help(argv, capsys):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 0


# -- errors, exit codes and interrupts ---------------------------------------------------

from napari_diffinfinite import cli, engine  # noqa: E402
from napari_diffinfinite.progress import Cancelled  # noqa: E402


def _one_error_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("diffinfinite: error: "), err
    return lines[0]


def _label_args(tmp_path, model_dir, *extra):
    return ["generate", "--out", str(tmp_path / "s.zarr"), "--size", "256x256", "--model", str(model_dir),
            "--label", "1", "--steps", "1", "-q", *extra]  # fmt: skip


def test_internal_error_is_one_line_and_v_shows_the_traceback(tmp_path, tiny_image_model_dir, monkeypatch, capsys):
    def broken(*args, **kwargs):
        raise TypeError("boom")

    monkeypatch.setattr(engine, "run_generate", broken)
    assert main(_label_args(tmp_path, tiny_image_model_dir)) == cli.EXIT_INTERNAL == 70
    err = capsys.readouterr().err
    assert _one_error_line(err) == "diffinfinite: error: internal error: TypeError: boom; run with -v for the traceback"
    assert main(_label_args(tmp_path, tiny_image_model_dir, "-v")) == 70
    err = capsys.readouterr().err
    assert "Traceback" in err and "TypeError: boom" in err


def test_keyboard_interrupt_exits_130_with_one_line(tmp_path, tiny_image_model_dir, monkeypatch, capsys):
    def interrupted(request, **kwargs):
        request.path.mkdir()  # the store exists: it is resumable
        raise KeyboardInterrupt

    monkeypatch.setattr(engine, "run_generate", interrupted)
    assert main(_label_args(tmp_path, tiny_image_model_dir)) == 130
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--resume" in err[0]


def test_interrupt_before_the_store_exists_does_not_point_to_resume(
    tmp_path, tiny_image_model_dir, monkeypatch, capsys
):
    """Ctrl-C while the layout was sampled said "the sampler state was saved: ... --resume"
    although no store existed yet."""

    def interrupted(request, **kwargs):
        raise Cancelled("cancelled by the user")

    monkeypatch.setattr(engine, "run_generate", interrupted)
    assert main(_label_args(tmp_path, tiny_image_model_dir)) == 130
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "before anything was written" in err[0] and "--resume" not in err[0]


def test_ctrl_c_while_the_commands_import_is_one_line(monkeypatch, capsys):
    """Ctrl-C in the first seconds (while build_parser imports the commands, torch among them)
    printed a Python traceback."""

    def importing(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "build_parser", importing)
    assert main(["info", "x"]) == 130
    assert capsys.readouterr().err.strip() == "diffinfinite: interrupted"


def test_output_into_a_closed_pipe_is_not_an_error(small_store):
    """`diffinfinite info STORE | head -1` printed "internal error: BrokenPipeError"."""
    import subprocess
    import sys

    process = subprocess.Popen(
        [sys.executable, "-m", "napari_diffinfinite", "info", str(small_store)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    process.stdout.read(1)
    process.stdout.close()  # the reader goes away after one byte, as `head -c1` does
    err = process.stderr.read().decode()
    assert process.wait(timeout=120) in (0, 141), err
    assert "error" not in err and "Traceback" not in err, err


def test_missing_optional_extra_is_named(tmp_path, tiny_image_model_dir, monkeypatch, capsys):
    def needs_openslide(*args, **kwargs):
        raise ModuleNotFoundError("No module named 'openslide'", name="openslide")

    monkeypatch.setattr(engine, "run_generate", needs_openslide)
    assert main(_label_args(tmp_path, tiny_image_model_dir)) == 1
    assert "pip install 'napari-diffinfinite[slides]'" in _one_error_line(capsys.readouterr().err)


def test_a_broken_command_module_is_not_dropped_silently(monkeypatch):
    real = cli.importlib.import_module

    def import_module(name, package=None):
        if name == ".commands.info":
            raise ModuleNotFoundError("No module named 'napari_diffinfinite.model.gone'",
                                      name="napari_diffinfinite.model.gone")  # fmt: skip
        return real(name, package)

    monkeypatch.setattr(cli.importlib, "import_module", import_module)
    with pytest.raises(ModuleNotFoundError, match="model.gone"):
        cli.build_parser()


def test_usage_errors_are_one_line_exit_2(capsys):
    assert main(["generate", "--out"]) == 2
    assert "--out: expected one argument" in _one_error_line(capsys.readouterr().err)
    assert main(["frobnicate"]) == 2
    assert "invalid choice: 'frobnicate'" in _one_error_line(capsys.readouterr().err)


@pytest.fixture
def small_store(tmp_path, tiny_image_model_dir):
    out = tmp_path / "small.zarr"
    assert main(["generate", "--out", str(out), "--size", "256x256", "--model", str(tiny_image_model_dir),
                 "--label", "1", "--steps", "1", "-q"]) == 0  # fmt: skip
    return out


def test_export_on_a_full_disk_is_one_line_and_leaves_nothing(small_store, tmp_path, monkeypatch, capsys):
    import errno

    import tifffile

    def full(self, *args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(tifffile.TiffWriter, "write", full)
    before = sorted(p.name for p in tmp_path.iterdir())
    capsys.readouterr()
    assert main(["export", str(small_store), str(tmp_path / "out.ome.tif"), "-q"]) == 1
    captured = capsys.readouterr()
    line = _one_error_line(captured.err)
    assert "disk is full" in line or "No space left" in line
    assert "Traceback" not in captured.err and "--resume" not in captured.err
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # no partial file, no temporary


def test_export_interrupt_does_not_point_to_resume(small_store, tmp_path, monkeypatch, capsys):
    from napari_diffinfinite.commands import export as export_command

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(export_command, "export_slide", interrupted)
    capsys.readouterr()
    assert main(["export", str(small_store), str(tmp_path / "out.ome.tif"), "-q"]) == 130
    err = capsys.readouterr().err
    assert "--resume" not in err and "nothing was written" in err


def test_keep_state_flag(tmp_path, tiny_image_model_dir):
    from napari_diffinfinite.slide.store import SlideStore

    out = tmp_path / "k.zarr"
    assert main(["generate", "--out", str(out), "--size", "256x256", "--model", str(tiny_image_model_dir),
                 "--label", "1", "--steps", "1", "-q", "--keep-state"]) == 0  # fmt: skip
    assert SlideStore.open(out).load_state() is not None
    out2 = tmp_path / "d.zarr"
    assert main(["generate", "--out", str(out2), "--size", "256x256", "--model", str(tiny_image_model_dir),
                 "--label", "1", "--steps", "1", "-q"]) == 0  # fmt: skip
    assert SlideStore.open(out2).load_state() is None and SlideStore.open(out2).load_canvas() is not None


def _state_step(out) -> int:
    pointer = out / "diffinfinite" / "state.json"
    try:
        return int(json.loads(pointer.read_text())["meta"]["step"])
    except (OSError, ValueError, KeyError):
        return -1


_SIGNAL_ARGS = ["--size", "256x256", "--label", "2", "--steps", "30", "--seed", "7", "--checkpoint-every", "0",
                "--device", "cpu", "-q"]  # fmt: skip


@pytest.fixture
def one_thread(monkeypatch):
    """Bit-equality across processes needs the same float reduction order: one torch thread here and
    in the subprocess (a different thread count alone changes a few pixels by one grey level).
    OMP_NUM_THREADS is set here too: without it the CLI adapts its thread count while it runs."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    yield {**os.environ, "OMP_NUM_THREADS": "1"}
    torch.set_num_threads(threads)


@pytest.fixture
def signal_reference(tmp_path_factory, tiny_image_model_dir, one_thread):
    """The uninterrupted slide the interrupted-and-resumed runs must equal."""
    out = tmp_path_factory.mktemp("signals") / "ref.zarr"
    if not out.exists():
        assert main(["generate", "--out", str(out), "--model", str(tiny_image_model_dir), *_SIGNAL_ARGS]) == 0
    return SlideStore.open(out).image_level(0)[:]


@pytest.mark.slow
@pytest.mark.parametrize("signum", ["SIGINT", "SIGTERM"])
def test_signal_saves_state_and_resume_equals_uninterrupted(
    tmp_path, tiny_image_model_dir, one_thread, signal_reference, signum
):
    import signal
    import subprocess
    import sys
    import time

    out = tmp_path / "cut.zarr"
    argv = ["generate", "--out", str(out), "--model", str(tiny_image_model_dir), *_SIGNAL_ARGS]
    proc = subprocess.Popen([sys.executable, "-m", "napari_diffinfinite.cli", *argv], env=one_thread,
                            stderr=subprocess.PIPE, stdout=subprocess.PIPE, text=True)  # fmt: skip
    deadline = time.monotonic() + 600
    while _state_step(out) < 1 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    reached = _state_step(out)
    assert proc.poll() is None and reached >= 1, "the run ended before a step was saved"
    proc.send_signal(getattr(signal, signum))
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == 130, err
    assert "--resume" in err and "Traceback" not in err
    saved = _state_step(out)
    assert reached <= saved < 30  # the state of the step reached was saved, not step 0
    assert not SlideStore.open(out).provenance["complete"]
    assert main(["generate", "--out", str(out), "--resume", "--model", str(tiny_image_model_dir), "-q"]) == 0
    assert np.array_equal(SlideStore.open(out).image_level(0)[:], signal_reference)


def _square(x0, y0, x1, y1):
    return [[[x0, y0], [x1, y0], [x1, y1], [x0, y1], [x0, y0]]]


def _feature(object_type, name, ring):
    return {"type": "Feature", "geometry": {"type": "Polygon", "coordinates": ring},
            "properties": {"objectType": object_type, "classification": {"name": name}}}  # fmt: skip


@pytest.fixture
def qupath_all_objects(tmp_path):
    """A QuPath "export all objects" file: an annotation, a derived-class annotation and a detection."""
    features = [
        _feature("annotation", "class 1", _square(0, 0, 128, 256)),
        _feature("annotation", "class 2: Positive", _square(128, 0, 192, 256)),
        _feature("detection", "class 2", _square(200, 0, 256, 256)),
    ]
    path = tmp_path / "all.geojson"
    path.write_text(json.dumps({"type": "FeatureCollection", "features": features}))
    return path


def test_generate_says_how_a_geojson_was_read(tmp_path, tiny_image_model_dir, qupath_all_objects, capsys):
    out = tmp_path / "g.zarr"
    args = ["generate", "--out", str(out), "--size", "256x256", "--model", str(tiny_image_model_dir),
            "--mask", str(qupath_all_objects), "--steps", "1", "-q"]  # fmt: skip
    assert main(args) == 0
    printed = capsys.readouterr().out
    layout_line = next(line for line in printed.splitlines() if line.startswith("layout:"))
    assert "skipped 1 detection" in layout_line and "'class 2: Positive' as 'class 2'" in layout_line
    assert "--include-detections" in layout_line
    labels = SlideStore.open(out).label_level(0)
    assert labels[0, 250] == 0  # the detection is not painted by default
    out2 = tmp_path / "g2.zarr"
    assert main([*args[:2], str(out2), *args[3:], "--include-detections"]) == 0
    assert SlideStore.open(out2).label_level(0)[0, 250] == 2


def test_generate_says_how_a_label_image_was_read(tmp_path, tiny_image_model_dir, capsys):
    Image.fromarray(np.ones((8, 8), np.uint8)).save(tmp_path / "m.png")
    assert main(["generate", "--out", str(tmp_path / "m.zarr"), "--size", "256x256", "--model",
                 str(tiny_image_model_dir), "--mask", str(tmp_path / "m.png"), "--steps", "1", "-q"]) == 0  # fmt: skip
    assert any(line.startswith("layout:") and "read as a label image" in line
               for line in capsys.readouterr().out.splitlines())  # fmt: skip


def test_resume_of_a_complete_store_does_nothing(tmp_path, tiny_image_model_dir, capsys):
    args = _label_args(tmp_path, tiny_image_model_dir)
    assert main(args) == 0
    out = tmp_path / "s.zarr"
    before = SlideStore.open(out).provenance
    capsys.readouterr()
    assert main([*args, "--resume"]) == 0
    assert "already complete; nothing to do" in capsys.readouterr().out
    assert SlideStore.open(out).provenance == before


@pytest.mark.parametrize("kind", ["text file", "tiff", "empty folder"])
def test_info_names_what_it_accepts(tmp_path, capsys, kind):
    if kind == "text file":
        path = tmp_path / "notes.txt"
        path.write_text("not a model")
    elif kind == "tiff":
        path = tmp_path / "slide.tif"
        Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(path)
    else:
        path = tmp_path / "empty"
        path.mkdir()
    assert main(["info", str(path)]) == 1
    line = _one_error_line(capsys.readouterr().err)
    assert "slide store" in line and "model folder" in line and "model-N.pt" in line
    assert "SHA-256" not in line and "LocalStore" not in line


def test_compile_flag_becomes_a_setting(tmp_path):
    import argparse

    from napari_diffinfinite.commands import generate

    parser = argparse.ArgumentParser()
    generate.add_parser(parser.add_subparsers())
    args = parser.parse_args(["generate", "--out", str(tmp_path / "s.zarr"), "--label", "1", "--compile"])
    assert generate.request_from_args(args).settings.compile is True


def test_bench_overhead_json_reports_ms_per_patch_per_size(capsys):
    assert main(["bench", "--overhead", "--json", "--sizes", "1024,2048", "--steps", "1"]) == 0
    result = json.loads(capsys.readouterr().out)
    sizes = {entry["size"]: entry for entry in result["sizes"]}
    assert sorted(sizes) == [1024, 2048]
    # 1024 px: a 128 x 128 latent of 64 px windows around 56 px cells (context 4), 3 or 4 a side
    assert sizes[1024]["context"] == 4 and sizes[1024]["first_step_timed"] == 125
    assert sizes[1024]["patches_per_step"] in (9, 12, 16) and sizes[1024]["batch_size"] == 64
    for entry in sizes.values():
        assert entry["ms_per_patch"] > 0 and entry["cpu_ms_per_patch"] > 0 and entry["setup_ms"] >= 0


def test_progress_bars_time_each_stage(monkeypatch):
    from napari_diffinfinite.commands import _progress
    from napari_diffinfinite.progress import ProgressEvent

    now = iter([0.0, 2.0, 7.5])
    monkeypatch.setattr(_progress.time, "perf_counter", lambda: next(now))
    bar = _progress.TqdmProgress(disable=True)
    bar(ProgressEvent("mask", 0, 1000))  # 0.0: layout starts
    bar(ProgressEvent("mask", 1000, 1000))
    bar(ProgressEvent("sample", 10, 1000))  # 2.0: sampling starts
    bar.close()  # 7.5
    assert bar.seconds == {"mask": 2.0, "sample": 5.5}
    assert bar.timing() == "mask 2.0 s, sample 5.5 s"


def test_sigterm_during_an_export_leaves_nothing(tmp_path):
    """`timeout` or a scheduler stops with SIGTERM, which ended the export at once with its
    temporary files left next to the output."""
    import signal
    import subprocess
    import sys
    import time

    import zarr

    src = tmp_path / "big.zarr"  # one 16384 px level of empty chunks: exporting it takes a while
    group = zarr.open_group(str(src), mode="w", zarr_format=2)
    group.create_array("0", shape=(3, 16384, 16384), dtype="u1", chunks=(3, 512, 512), fill_value=200)
    axes = [{"name": "c", "type": "channel"}, {"name": "y", "type": "space"}, {"name": "x", "type": "space"}]
    group.attrs["multiscales"] = [{"version": "0.4", "axes": axes, "datasets": [{"path": "0"}]}]
    out = tmp_path / "exports"
    out.mkdir()
    process = subprocess.Popen(
        [sys.executable, "-m", "napari_diffinfinite", "export", str(src), str(out / "o.tif"), "-q"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    deadline = time.monotonic() + 120
    while not list(out.iterdir()) and time.monotonic() < deadline and process.poll() is None:
        time.sleep(0.05)
    assert list(out.iterdir()), "the export never started writing"
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=120)
    assert process.returncode == 130, err.decode()[-2000:]
    assert list(out.iterdir()) == []


def test_a_full_disk_during_generate_points_to_resume(tmp_path, tiny_image_model_dir, monkeypatch, capsys):
    """It said "run the command again", which is refused for an existing store."""
    import errno

    def full(request, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", str(request.path))

    monkeypatch.setattr(engine, "run_generate", full)
    assert main(_label_args(tmp_path, tiny_image_model_dir)) == 1
    assert "--resume" in _one_error_line(capsys.readouterr().err)


def test_odd_paths_are_named_for_what_they_are(tmp_path, tiny_image_model_dir, capsys):
    afile = tmp_path / "x.tif"
    afile.write_text("a file")
    assert main(["generate", "--out", str(afile / "sub.zarr"), "--size", "256x256", "--label", "1"]) == 1
    assert "is a file, not a folder" in _one_error_line(capsys.readouterr().err)
    assert main(["info", "/dev/null"]) == 1
    assert "not a regular file or folder" in _one_error_line(capsys.readouterr().err)


def test_an_option_that_would_do_nothing_is_refused(tmp_path, tiny_image_model_dir, capsys):
    """--tissue-label with --label (no real slide) was silently ignored."""
    assert main([*_label_args(tmp_path, tiny_image_model_dir), "--tissue-label", "2"]) == 1
    assert "--tissue-label" in _one_error_line(capsys.readouterr().err)
    assert main([*_label_args(tmp_path, tiny_image_model_dir), "--num-labels", "5"]) == 1
    assert "--num-labels" in _one_error_line(capsys.readouterr().err)
    assert not (tmp_path / "s.zarr").exists()


def test_mask_options_by_name_steps_and_where_they_do_nothing(tmp_path, capsys):
    """--mask-condition takes the condition's name too, --mask-steps the layout's steps; a mask
    option next to --label did nothing and is refused."""
    out = tmp_path / "named.zarr"
    args = ["generate", "--out", str(out), "--size", "256x256", "--steps", "1", "--device", "cpu", "-q"]
    assert main([*args, "--mask-condition", "TISSUE", "--mask-steps", "2", "--mask-seed", "4"]) == 0
    mask = SlideStore.open(out, mode="r").provenance["mask"]
    assert (mask["condition"], mask["condition_name"], mask["steps"], mask["seed"]) == (1, "tissue", 2, 4)
    capsys.readouterr()
    assert main([*args[:2], str(tmp_path / "x.zarr"), *args[3:], "--mask-condition", "stroma"]) == 1
    assert "no condition named 'stroma'; its conditions: 0=any, 1=tissue" in capsys.readouterr().err
    assert main([*args[:2], str(tmp_path / "y.zarr"), *args[3:], "--label", "1", "--mask-seed", "3"]) == 1
    assert "--mask-seed apply to a layout sampled by a mask model, not to --label" in capsys.readouterr().err
    assert not (tmp_path / "x.zarr").exists() and not (tmp_path / "y.zarr").exists()
