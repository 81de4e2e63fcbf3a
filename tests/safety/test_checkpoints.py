"""Hostile and malformed model files: each is refused with one clear error, runs nothing, leaves nothing.

The files are built by the tests (:mod:`tests.safety.hostile`) in temporary folders. Each case
asserts the exception type (or the CLI's exit code and ``diffinfinite: error:`` line), the kind
of message, that no payload ran (its sentinel file is absent) and that no output or temporary
was left behind.
"""

from __future__ import annotations

import json
import os
import resource
import struct
import subprocess
import sys
import tarfile
import textwrap
import tracemalloc
import zipfile
from pathlib import Path

import pytest
import torch

from napari_diffinfinite.cli import main
from napari_diffinfinite.errors import CheckpointError
from napari_diffinfinite.model.config import ModelConfig
from napari_diffinfinite.model.pretrained import load_model, new_model, save_pretrained
from napari_diffinfinite.model.torch_file import UnsafeCheckpoint
from napari_diffinfinite.testing import tiny_image_config, write_official_checkpoint

from .hostile import (
    Call,
    Storage,
    Tensor,
    deep_list_opcodes,
    official_dict,
    pickle_bytes,
    safetensors_bytes,
    save_official,
    shell,
    splice,
    write_pickled_zip,
    write_tar_with_hardlink,
    write_torch_zip,
    write_torchscript,
)

EMA = "ema_model.model."


def leftovers(folder: Path, name: str) -> list[str]:
    """Anything of an output ``name`` in ``folder``: the output itself or its temporaries."""
    return sorted(p.name for p in folder.iterdir() if p.name == name or p.name.startswith(f".{name}."))


def cli(args: list[str], capsys) -> tuple[int, str]:
    code = main([str(a) for a in args])
    return code, capsys.readouterr().err


def assert_cli_refused(code: int, err: str, *fragments: str) -> None:
    assert code != 0
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("diffinfinite: error: "), err
    assert "Traceback" not in err
    for fragment in fragments:
        assert fragment in err, (fragment, err)


# --------------------------------------------------------------------------- code execution


def test_torchscript_setstate_is_not_run(tmp_path):
    live, sentinel = tmp_path / "live-sentinel", tmp_path / "sentinel"
    # the payload is real: torch.jit.load runs __setstate__, which writes its sentinel
    torch.jit.load(str(write_torchscript(tmp_path / "control.pt", live)))
    assert live.exists()
    path = write_torchscript(tmp_path / "model-1.pt", sentinel)
    with pytest.raises(UnsafeCheckpoint, match="TorchScript archive"):
        load_model(path)
    assert not sentinel.exists()


@pytest.mark.parametrize("command", ["info", "convert"])
def test_torchscript_refused_by_cli(tmp_path, capsys, command):
    sentinel = tmp_path / "sentinel"
    path = write_torchscript(tmp_path / "model-1.pt", sentinel)
    args = [command, path] + ([tmp_path / "out"] if command == "convert" else [])
    code, err = cli(args, capsys)
    assert_cli_refused(code, err, "TorchScript archive")
    assert not sentinel.exists() and leftovers(tmp_path, "out") == []


@pytest.mark.parametrize("fmt", [tarfile.PAX_FORMAT, tarfile.GNU_FORMAT, tarfile.USTAR_FORMAT])
def test_legacy_tar_with_hardlink_touches_nothing(tmp_path, fmt):
    victim = tmp_path / "victim.txt"
    victim.write_text("the user's file")
    victim.chmod(0o600)
    os.utime(victim, (1_600_000_000, 1_600_000_000))
    before = victim.stat()
    path = write_tar_with_hardlink(tmp_path / "model-1.pt", victim, fmt)
    # the payload is real: extracting the member as torch's legacy loader does changes the linked file
    control = tmp_path / "control.txt"
    control.write_text("x")
    control.chmod(0o600)
    with tarfile.open(write_tar_with_hardlink(tmp_path / "control.pt", control, fmt)) as tar:
        tar.extract("storages", path=tmp_path / "extracted", filter="fully_trusted")
    assert control.stat().st_mode & 0o777 == 0o777 and control.stat().st_mtime == 0
    with pytest.raises(UnsafeCheckpoint, match="legacy tar-format"):
        load_model(path)
    after = victim.stat()
    assert (after.st_mode, after.st_mtime_ns, after.st_uid, after.st_nlink) == (
        before.st_mode, before.st_mtime_ns, before.st_uid, before.st_nlink,
    )  # fmt: skip
    assert victim.read_text() == "the user's file"


def test_legacy_tar_refused_by_cli_info(tmp_path, capsys):
    victim = tmp_path / "victim.txt"
    victim.write_text("x")
    before = victim.stat()
    code, err = cli(["info", write_tar_with_hardlink(tmp_path / "m.pt", victim)], capsys)
    assert_cli_refused(code, err, "legacy tar-format")
    assert victim.stat().st_mode == before.st_mode and victim.stat().st_mtime_ns == before.st_mtime_ns


@pytest.mark.parametrize(
    "payload, named",
    [
        ("system", r"(os|posix)\.system"),
        ("eval", r"builtins\.eval"),
        ("exec", r"builtins\.exec"),
        ("popen", r"subprocess\.Popen"),
        ("import", r"builtins\.__import__"),
    ],
)
def test_code_globals_in_a_torch_zip_are_refused(tmp_path, payload, named):
    import subprocess as sp

    sentinel = tmp_path / "sentinel"
    call = {
        "system": shell(sentinel),
        "eval": Call(eval, f"open({str(sentinel)!r}, 'w')"),
        "exec": Call(exec, f"open({str(sentinel)!r}, 'w')"),
        "popen": Call(sp.Popen, ["touch", str(sentinel)]),
        "import": Call(__import__, "os"),
    }[payload]
    data = official_dict()
    data["scheduler"] = {"hook": call}
    path = save_official(tmp_path / "model-1.pt", data)
    with pytest.raises(UnsafeCheckpoint, match=named):
        load_model(path)
    assert not sentinel.exists()


def test_os_system_pickle_refused_by_cli(tmp_path, capsys):
    sentinel = tmp_path / "sentinel"
    path = save_official(tmp_path / "model-1.pt", {"ema": shell(sentinel)})
    code, err = cli(["convert", path, tmp_path / "out"], capsys)
    assert_cli_refused(code, err, "system")
    assert not sentinel.exists() and leftovers(tmp_path, "out") == []


def test_plain_pickle_is_refused_without_unpickling(tmp_path):
    import pickle

    sentinel = tmp_path / "sentinel"
    path = tmp_path / "model-1.pt"
    path.write_bytes(pickle.dumps({"ema": shell(sentinel)}, protocol=2))
    with pytest.raises(UnsafeCheckpoint, match="plain pickle or a legacy PyTorch file"):
        load_model(path)
    assert not sentinel.exists()


# --------------------------------------------------------------------------- memory bombs


def _peak_during(func) -> tuple[BaseException | None, int, int]:
    """(exception raised, growth of the process's peak RSS in bytes, peak of Python allocations in bytes)."""
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    tracemalloc.start()
    try:
        func()
        error = None
    except BaseException as exc:  # noqa: BLE001 - returned to the test
        error = exc
    _, python_peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return error, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - rss_before, python_peak


def write_10gb_declaration(path: Path) -> Path:
    storage = Storage("0", 2_500_000_000)  # 10 GB of float32
    data = {"ema": Tensor(storage, 0, (50_000, 50_000), (50_000, 1))}
    return write_pickled_zip(path, data, records={"data/0": bytes(16)}, byteorder=False)


def test_1kb_file_declaring_10gb_storage(tmp_path):
    path = write_10gb_declaration(tmp_path / "model-1.pt")
    assert path.stat().st_size < 1024
    error, rss_growth, python_peak = _peak_during(lambda: load_model(path))
    assert isinstance(error, UnsafeCheckpoint) and "declares a storage of 10,000,000,000 bytes" in str(error)
    assert rss_growth < 500 * 2**20 and python_peak < 500 * 2**20


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="uses /proc and RLIMIT_AS")
def test_10gb_declaration_refused_within_500mb_address_space(tmp_path):
    """The same file loaded in a process that cannot map more than 500 MB beyond what it already has."""
    path = write_10gb_declaration(tmp_path / "model-1.pt")
    script = textwrap.dedent(
        """
        import json, resource, sys
        from napari_diffinfinite.errors import CheckpointError
        from napari_diffinfinite.model.pretrained import load_model
        vm = next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmSize")) * 1024
        resource.setrlimit(resource.RLIMIT_AS, (vm + 500 * 2**20, resource.RLIM_INFINITY))
        try:
            load_model(sys.argv[1])
            out = {"error": None}
        except BaseException as exc:
            out = {"error": type(exc).__name__, "message": str(exc)}
        print(json.dumps(out))
        """
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    run = subprocess.run(
        [sys.executable, "-c", script, str(path)], capture_output=True, text=True, env=env, timeout=300
    )
    out = json.loads(run.stdout.strip().splitlines()[-1])
    assert out["error"] == "UnsafeCheckpoint" and "declares a storage" in out["message"], run.stderr


def test_bytearray_bomb_is_refused(tmp_path):
    data = official_dict()
    data["loss"] = Call(bytearray, 10**10)
    path = save_official(tmp_path / "model-1.pt", data)
    error, rss_growth, python_peak = _peak_during(lambda: load_model(path))
    assert isinstance(error, UnsafeCheckpoint) and "bytearray of 10,000,000,000 bytes" in str(error)
    assert rss_growth < 500 * 2**20 and python_peak < 500 * 2**20


def test_legacy_tensor_constructor_is_refused(tmp_path):
    data = official_dict()
    data["loss"] = Call(torch.FloatTensor, 10**10)
    path = save_official(tmp_path / "model-1.pt", data)
    with pytest.raises(UnsafeCheckpoint, match="torch.FloatTensor"):
        load_model(path)


def test_stride_zero_weights_are_refused_before_any_network(tmp_path):
    """A few bytes viewed as huge weights: refused in the file, no network is built."""
    data = official_dict()
    data["ema"][f"{EMA}classes_emb.weight"] = torch.zeros(1).expand(100_000, 8)
    path = save_official(tmp_path / "model-1.pt", data)
    error, rss_growth, _ = _peak_during(lambda: load_model(path))
    assert isinstance(error, CheckpointError) and "only contiguous tensors" in str(error)
    assert rss_growth < 200 * 2**20


def test_zero_size_weight_cannot_claim_a_huge_architecture(tmp_path):
    data = official_dict()
    data["ema"][f"{EMA}classes_emb.weight"] = torch.zeros(10_000_000, 0)
    path = save_official(tmp_path / "model-1.pt", data)
    error, rss_growth, python_peak = _peak_during(lambda: load_model(path))
    assert isinstance(error, CheckpointError) and "unet.num_classes must be between 1 and 256" in str(error)
    assert rss_growth < 200 * 2**20 and python_peak < 50 * 2**20


def test_overlapping_weights_are_refused(tmp_path):
    data = official_dict()
    weight = data["ema"][f"{EMA}final_conv.weight"]
    data["ema"][f"{EMA}final_conv.bias"] = weight.view(-1)[: weight.shape[0]]  # shares the weight's memory
    path = save_official(tmp_path / "model-1.pt", data)
    with pytest.raises(CheckpointError, match="share memory"):
        load_model(path)


def test_view_outside_its_storage_is_refused(tmp_path):
    storage = Storage("0", 4)
    path = write_pickled_zip(tmp_path / "m.pt", {"ema": {f"{EMA}x": Tensor(storage, 2, (4,), (1,))}})
    with pytest.raises(CheckpointError, match="reads 24 bytes of record data/0, which holds 16"):
        load_model(path)


def test_storage_smaller_than_declared_is_refused(tmp_path):
    storage = Storage("0", 64)
    path = write_pickled_zip(tmp_path / "m.pt", {"x": Tensor(storage, 0, (64,), (1,))}, records={"data/0": bytes(8)})
    with pytest.raises(UnsafeCheckpoint, match="declares a storage of 256 bytes .* which holds 8 bytes"):
        load_model(path)


def test_storage_without_record_is_refused(tmp_path):
    data = pickle_bytes({"x": Tensor(Storage("7", 4), 0, (4,), (1,))})
    path = write_torch_zip(tmp_path / "m.pt", data)
    with pytest.raises(CheckpointError, match="a storage \\(7\\) without its record data/7"):
        load_model(path)


def test_oversized_pickle_is_refused(tmp_path):
    data = official_dict()
    data["loss"] = [0.5] * 600_000  # ~5 MB of pickle
    path = save_official(tmp_path / "model-1.pt", data)
    with pytest.raises(UnsafeCheckpoint, match="its pickle is"):
        load_model(path)


@pytest.mark.parametrize("opcode", [b"\x8e", b"\x96", b"\x8a"], ids=["BINBYTES8", "BYTEARRAY8", "LONG4"])
def test_pickle_opcode_declaring_10gb_is_refused(tmp_path, opcode):
    length = struct.pack("<Q", 10**10) if opcode != b"\x8a" else struct.pack("<i", 2**31 - 1)
    path = write_torch_zip(tmp_path / "m.pt", b"\x80\x04" + opcode + length + b"abc")
    error, rss_growth, python_peak = _peak_during(lambda: load_model(path))
    assert isinstance(error, CheckpointError) and "truncated" in str(error)
    assert rss_growth < 500 * 2**20 and python_peak < 500 * 2**20


# --------------------------------------------------------------------------- malformed files: no tracebacks


def test_deeply_nested_weight_is_one_clear_error(tmp_path):
    pickled = pickle_bytes({"ema": {f"{EMA}init_conv.weight": "DEEP"}})
    path = write_torch_zip(tmp_path / "m.pt", splice(pickled, "DEEP", deep_list_opcodes(60_000)))
    with pytest.raises(CheckpointError, match="holds pickled objects instead of tensors .* a list"):
        load_model(path)


def test_deeply_nested_top_level_is_one_clear_error(tmp_path):
    path = write_torch_zip(tmp_path / "m.pt", b"\x80\x02" + deep_list_opcodes(60_000) + b".")
    with pytest.raises(CheckpointError, match="holds a list, not a checkpoint dictionary"):
        load_model(path)


@pytest.mark.parametrize(
    "content, message",
    [
        (b"", "not a PyTorch checkpoint"),
        (b"not a checkpoint at all" * 10, "not a PyTorch checkpoint"),
        (b"PK\x03\x04" + bytes(60), "not a readable PyTorch checkpoint"),
        (struct.pack("<Q", 20) + b'{"a": 1}' + b" " * 12, "is a safetensors file"),
    ],
    ids=["empty", "garbage", "zip-magic-only", "bare-safetensors"],
)
def test_unreadable_files(tmp_path, content, message):
    path = tmp_path / "model-1.pt"
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match=message):
        load_model(path)


def test_truncated_checkpoint(tmp_path, official_image_checkpoint):
    data = official_image_checkpoint.read_bytes()
    for cut in (len(data) // 2, len(data) - 10):
        path = tmp_path / f"model-{cut}.pt"
        path.write_bytes(data[:cut])
        with pytest.raises(CheckpointError, match="not a readable PyTorch checkpoint"):
            load_model(path)


def test_zip_without_data_pkl(tmp_path):
    with zipfile.ZipFile(tmp_path / "m.pt", "w") as zf:
        zf.writestr("archive/version", "3\n")
        zf.writestr("archive/other", "x")
    with pytest.raises(CheckpointError, match="has no data.pkl"):
        load_model(tmp_path / "m.pt")


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda d: d.update(ema=[1, 2, 3]), "'ema' entry .* is a list, not a state dict"),
        (lambda d: d["ema"].update({f"{EMA}init_conv.weight": torch.zeros(8)}), "init_conv.weight has shape \\(8,\\)"),
        (lambda d: d["ema"].pop(f"{EMA}classes_emb.weight"), "missing key 'classes_emb.weight'"),
        (
            lambda d: d["ema"].update({f"{EMA}final_conv.bias": torch.zeros(4, dtype=torch.int64)}),
            "must be floating-point",
        ),
        (lambda d: d["ema"][f"{EMA}final_conv.bias"].fill_(float("nan")), "NaN or infinite"),
        (lambda d: d["ema"].update({f"{EMA}downs.x.0.weight": torch.zeros(1)}), "unexpected keys: downs.x.0.weight"),
        (lambda d: d["ema"].update({f"{EMA}init_conv.weight": torch.zeros(0, 4, 7, 7)}), "not a multiple of dim=0"),
    ],
    ids=["ema-not-dict", "weight-wrong-ndim", "missing-key", "integer-weights", "nan-weights", "odd-key", "dim-0"],
)
def test_malformed_official_checkpoints(tmp_path, mutate, message):
    data = official_dict()
    mutate(data)
    with pytest.raises(CheckpointError, match=message):
        load_model(save_official(tmp_path / "model-1.pt", data))


# --------------------------------------------------------------------------- safetensors folders


def _folder_with_weights(tmp_path: Path, content: bytes) -> Path:
    folder = save_pretrained(new_model(tiny_image_config()), tmp_path / "m")
    (folder / "model.safetensors").write_bytes(content)
    return folder


@pytest.mark.parametrize(
    "content, message",
    [
        (struct.pack("<Q", 2**63) + b"{}", "the header claims"),
        (struct.pack("<Q", 100) + b"{}", "the header claims"),
        (safetensors_bytes({"a": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}}, bytes(8)), "outside the"),
        (safetensors_bytes({"a": {"dtype": "F32", "shape": [4], "data_offsets": [0, 8]}}, bytes(8)), "needs 16 bytes"),
        (
            safetensors_bytes(
                {
                    "a": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]},
                    "b": {"dtype": "F32", "shape": [4], "data_offsets": [8, 24]},
                },
                bytes(24),
            ),
            "overlap",
        ),
        (safetensors_bytes({"a": {"dtype": "F32", "shape": [-1], "data_offsets": [0, 0]}}, b""), "malformed shape"),
        (safetensors_bytes({"a": {"dtype": "OBJ", "shape": [1], "data_offsets": [0, 1]}}, b"x"), "unsupported dtype"),
        (safetensors_bytes({"a": [1, 2]}, b""), "must have exactly dtype"),
        (struct.pack("<Q", 4) + b"[1] ", "not a JSON object"),
    ],
    ids=[
        "huge-header",
        "header-past-end",
        "offsets-past-end",
        "size-mismatch",
        "overlap",
        "negative-shape",
        "bad-dtype",
        "bad-entry",
        "header-array",
    ],  # fmt: skip
)
def test_malformed_safetensors(tmp_path, content, message):
    with pytest.raises(CheckpointError, match=message):
        load_model(_folder_with_weights(tmp_path, content))


def test_config_claiming_a_bigger_network_than_its_weights(tmp_path):
    """config.json says dim 1024; the weights are tiny: refused from the header, before building."""
    folder = save_pretrained(new_model(tiny_image_config()), tmp_path / "m")
    config = json.loads((folder / "config.json").read_text())
    config["unet"]["dim"] = 1024
    (folder / "config.json").write_text(json.dumps(config))
    error, rss_growth, _ = _peak_during(lambda: load_model(folder))
    assert isinstance(error, CheckpointError) and "does not fit the ImageUNet architecture" in str(error)
    assert rss_growth < 200 * 2**20


# --------------------------------------------------------------------------- malformed configs


BAD_CONFIGS = {
    "negative-patch": ({"patch_size": -128}, "patch_size must be between 1"),
    "colour-out-of-range": ({"class_colors": [[0, 0, 0], [999, -1, 5], [1, 2, 3]]}, "class_colors\\[1\\]"),
    "latent-scale-0": ({"latent_scale": 0}, "latent_scale must be a positive number"),
    "duplicate-names": ({"class_names": ["unknown", "tumour", "Tumour"]}, "duplicate"),
    "unet-not-object": ({"unet": [1, 2]}, "'unet' section must be a JSON object"),
    "dim-string": ({"unet": {"dim": "8"}}, "unet.dim must be an integer"),
    "dim-mults-string": ({"unet": {"dim_mults": "12"}}, "unet.dim_mults must be a list"),
    "names-not-list": ({"class_names": "unknown"}, "class_names must be a list of strings"),
    "colours-not-list": ({"class_colors": 5}, "class_colors must be a list"),
    "eta-2": ({"eta": 2}, "eta must be a number between 0 and 1"),
    "steps-0": ({"sampling_steps": 0}, "sampling_steps must be between 1"),
    "kind-null": ({"kind": None}, "kind must be 'image' or 'mask'"),
    "num-classes-huge": ({"unet": {"num_classes": 100_000}}, "unet.num_classes must be between 1 and 256"),
    "unknown-key": ({"colour": 1}, "unknown keys in model config: colour"),
}


def _write_config(folder: Path, change: dict) -> None:
    config = json.loads((folder / "config.json").read_text())
    for key, value in change.items():
        if key == "unet" and isinstance(value, dict):
            config["unet"].update(value)
        else:
            config[key] = value
    (folder / "config.json").write_text(json.dumps(config))


@pytest.mark.parametrize("case", sorted(BAD_CONFIGS))
def test_malformed_config_is_one_clear_error(tmp_path, case):
    change, message = BAD_CONFIGS[case]
    folder = save_pretrained(new_model(tiny_image_config()), tmp_path / "m")
    _write_config(folder, change)
    with pytest.raises(CheckpointError, match=message):
        load_model(folder)


@pytest.mark.parametrize(
    "text, message",
    [("{not json", "is not valid JSON"), ('{"patch_size": NaN}', "is not valid JSON"), ("[1, 2]", "must be a JSON object"),
     ("\udcff", "is not valid JSON"), ("[" * 100_000, "is not valid JSON")],
    ids=["syntax", "nan", "array", "bad-utf8", "deep"],
)  # fmt: skip
def test_unparsable_config(tmp_path, text, message):
    folder = save_pretrained(new_model(tiny_image_config()), tmp_path / "m")
    (folder / "config.json").write_bytes(text.encode("utf-8", "surrogateescape"))
    with pytest.raises(CheckpointError, match=message):
        load_model(folder)


@pytest.mark.parametrize("case", ["negative-patch", "colour-out-of-range", "latent-scale-0", "duplicate-names"])
def test_info_refuses_what_generate_refuses(tmp_path, capsys, case):
    change, message = BAD_CONFIGS[case]
    folder = save_pretrained(new_model(tiny_image_config()), tmp_path / "m")
    _write_config(folder, change)
    code, err = cli(["info", folder], capsys)
    assert_cli_refused(code, err, "invalid model configuration")


# --------------------------------------------------------------------------- convert


@pytest.mark.parametrize(
    "options, message",
    [
        (["--num-labels", "0"], "must be an integer from 2 to 256"),
        (["--num-labels", "5"], "applies only to official mask models"),
        (["--class-colors", "0,0,0;999,-1,5;1,2,3"], "class_colors[1] = [999, -1, 5]"),
        (["--class-colors", "red;green;blue"], "--class-colors: 'red' is not a colour"),
        (["--class-names", "unknown,tumour,tumour"], "duplicate"),
        (["--class-names", "unknown,tumour"], "class_names must have 3 entries"),
        (["--pixel-size", "-1"], "pixel_size_um must be a number from 0.01 to 1000"),
        (["--pixel-size", "1e-300"], "pixel_size_um must be a number from 0.01 to 1000"),  # export failed on it
    ],
    ids=[
        "num-labels-0",
        "num-labels-image",
        "colour-range",
        "colour-syntax",
        "dup-names",
        "names-count",
        "pixel-size",
        "pixel-size-tiny",
    ],
)
def test_convert_refuses_what_generate_would(tmp_path, capsys, official_image_checkpoint, options, message):
    code, err = cli(["convert", official_image_checkpoint, tmp_path / "out", *options], capsys)
    assert_cli_refused(code, err, message)
    assert leftovers(tmp_path, "out") == []


def test_convert_num_labels_0_for_mask_model(tmp_path, capsys, official_mask_checkpoint):
    code, err = cli(["convert", official_mask_checkpoint, tmp_path / "out", "--num-labels", "0"], capsys)
    assert_cli_refused(code, err, "must be an integer from 2 to 256")
    assert leftovers(tmp_path, "out") == []


def test_convert_overwrite_refuses_a_user_folder(tmp_path, capsys, official_image_checkpoint):
    out = tmp_path / "out"
    out.mkdir()
    (out / "thesis.tex").write_text("years of work")
    (out / "config.json").write_text("{}")
    code, err = cli(["convert", official_image_checkpoint, out, "--overwrite"], capsys)
    assert_cli_refused(code, err, "refusing to overwrite", "thesis.tex")
    assert (out / "thesis.tex").read_text() == "years of work"
    assert leftovers(tmp_path, "out") == ["out"]


def test_convert_overwrite_refuses_a_folder_without_our_marker(tmp_path, capsys, official_image_checkpoint):
    out = tmp_path / "out"
    out.mkdir()
    (out / "config.json").write_text(json.dumps(tiny_image_config().to_dict()))
    code, err = cli(["convert", official_image_checkpoint, out, "--overwrite"], capsys)
    assert_cli_refused(code, err, "does not say it was written by napari-diffinfinite")
    assert json.loads((out / "config.json").read_text()) == tiny_image_config().to_dict()


def test_convert_overwrite_never_follows_a_link(tmp_path, capsys, official_image_checkpoint):
    ours = save_pretrained(new_model(tiny_image_config()), tmp_path / "ours")
    before = sorted(p.name for p in ours.iterdir())
    (tmp_path / "link").symlink_to(ours)
    code, err = cli(["convert", official_image_checkpoint, tmp_path / "link", "--overwrite"], capsys)
    assert_cli_refused(code, err, "symbolic link")
    assert (tmp_path / "link").is_symlink() and sorted(p.name for p in ours.iterdir()) == before
    assert load_model(ours).config.kind == "image"


def test_convert_overwrite_refuses_a_folder_holding_a_link(tmp_path, capsys, official_image_checkpoint):
    out = save_pretrained(new_model(tiny_image_config()), tmp_path / "out")
    outside = tmp_path / "outside.png"
    outside.write_bytes(b"user data")
    (out / "samples.png").symlink_to(outside)
    code, err = cli(["convert", official_image_checkpoint, out, "--overwrite"], capsys)
    assert_cli_refused(code, err, "samples.png is not a regular file")
    assert outside.read_bytes() == b"user data"


def test_convert_overwrite_replaces_our_own_folder(tmp_path, capsys, official_image_checkpoint):
    out = tmp_path / "out"
    assert main(["convert", str(official_image_checkpoint), str(out)]) == 0
    assert (
        main(["convert", str(official_image_checkpoint), str(out), "--class-names", "unknown,a,b", "--overwrite"]) == 0
    )
    assert load_model(out).config.class_names == ["unknown", "a", "b"]
    assert leftovers(tmp_path, "out") == ["out"]
    code, err = cli(["convert", official_image_checkpoint, out], capsys)
    assert_cli_refused(code, err, "already exists")


def test_stale_temporaries_of_a_killed_convert_are_removed(tmp_path, official_image_checkpoint):
    out = tmp_path / "out"
    script = "import sys; from pathlib import Path; from napari_diffinfinite.slide.atomic import make_temporary; " \
             "t = make_temporary(Path(sys.argv[1]), directory=True); (t / 'model.safetensors').write_bytes(b'partial')"  # fmt: skip
    subprocess.run([sys.executable, "-c", script, str(out)], check=True, timeout=120)
    other = tmp_path / ".other.tmp-keep"
    other.mkdir()
    stale = leftovers(tmp_path, "out")
    assert len(stale) == 1 and stale[0].startswith(".out.tmp-")
    assert main(["convert", str(official_image_checkpoint), str(out)]) == 0
    assert leftovers(tmp_path, "out") == ["out"] and other.is_dir()


def test_save_pretrained_leaves_nothing_when_writing_fails(tmp_path):
    model = new_model(tiny_image_config())
    model.config.class_names = ["unknown", "a", "a"]  # made invalid after construction
    with pytest.raises(CheckpointError, match="duplicate"):
        save_pretrained(model, tmp_path / "m")
    assert list(tmp_path.iterdir()) == []


def test_official_files_still_load_through_the_cli(tmp_path, capsys):
    path = write_official_checkpoint(tmp_path / "model-3.pt", kind="mask")
    assert main(["info", str(path), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["kind"] == "mask" and len(info["class_names"]) == 5


@pytest.mark.slow
def test_cli_subprocess_prints_one_error_line(tmp_path):
    """The real console entry point: no traceback, exit 1, one ``diffinfinite: error:`` line."""
    sentinel = tmp_path / "sentinel"
    path = write_torchscript(tmp_path / "model-1.pt", sentinel)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    run = subprocess.run(
        [sys.executable, "-m", "napari_diffinfinite.cli", "info", str(path)],
        capture_output=True, text=True, env=env, timeout=300,
    )  # fmt: skip
    assert run.returncode == 1 and run.stderr.startswith("diffinfinite: error: ") and "Traceback" not in run.stderr
    assert not sentinel.exists()


def test_model_config_roundtrip_keeps_the_marker_out_of_the_config(tmp_path):
    folder = save_pretrained(new_model(tiny_image_config()), tmp_path / "m")
    raw = json.loads((folder / "config.json").read_text())
    assert raw["written_by"] == "napari-diffinfinite"
    assert ModelConfig.load(folder / "config.json").to_dict() == tiny_image_config().to_dict()


def test_unwritable_output_is_one_clear_error(tmp_path, capsys, official_image_checkpoint):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    code, err = cli(["convert", official_image_checkpoint, blocker / "out"], capsys)
    assert_cli_refused(code, err, "cannot create")
    assert blocker.read_text() == "not a folder"
