"""Finding, checking and loading a diffusers pipeline folder, a ControlNet and LoRA weights.

A pipeline is a local folder in diffusers' layout (``model_index.json``, ``unet/``, ``vae/``,
``text_encoder/``, ``tokenizer/``, ``scheduler/``), or a model id whose snapshot is in the
local Hugging Face cache; nothing is ever downloaded (``local_files_only``). Weights are
read from safetensors only: a component that holds only pickled weights (``.bin``, ``.ckpt``,
``.pt``, ``.pth``) is refused before anything is read, because unpickling can run code. Every
safetensors header is checked against its file (:mod:`..model.safetensors_file`) first. The
components are loaded by their known classes (``UNet2DConditionModel``, ``AutoencoderKL``,
``CLIPTextModel``, ``CLIPTokenizer``), never by a class name the folder names, so a folder
cannot make us import custom code. The config fields read here or that size something (the
scheduler's, the patch size, the prompt length, the ControlNet's input channels, the pixel
size) are checked for type and range first, and loaded weights for NaN and infinity.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..errors import CheckpointError
from ..model.config import (
    MAX_CHANNELS,
    MAX_CLASSES,
    MAX_CONFIG_BYTES,
    MAX_LEVELS,
    MAX_PATCH_SIZE,
    PIXEL_SIZE_RANGE_UM,
    default_class_colors,
    default_class_names,
    int_problem,
    is_int,
    is_real,
)
from ..model.pretrained import sha256_file
from ..model.safetensors_file import read_header
from .conditioning import MODES
from .schedule import scheduler_config_problems

PICKLE_SUFFIXES = (".bin", ".ckpt", ".pt", ".pth", ".pkl", ".pickle")
COMPONENTS = ("unet", "vae", "text_encoder", "tokenizer", "scheduler")
WEIGHT_COMPONENTS = ("unet", "vae", "text_encoder")
CLASSES_FILE = "diffinfinite.json"  # class names, colours and ControlNet conditioning, optional
DEFAULT_CLASSES = 10
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
MAX_TEXT_TOKENS = 1024  # text encoder positions (CLIP: 77); every prompt is padded to this many tokens
MAX_BLOCK_CHANNELS = 8192  # a VAE block's width (Stable Diffusion's: 128 to 512)


def _pickle_refusal(what: str, files: list[Path]) -> CheckpointError:
    names = ", ".join(p.name for p in files[:3])
    return CheckpointError(
        f"{what} holds only pickled weights ({names}); a pickle can run code when it is loaded, so it is refused. "
        "Use the model's safetensors weights (most hub models have them; diffusers' save_pretrained writes them), "
        "or convert the file with diffusers on a machine where you trust it"
    )


def resolve(spec: str | Path, what: str) -> Path:
    """A local folder for ``spec``: the folder itself, or the snapshot of a hub id in the local cache."""
    path = Path(spec).expanduser()
    if path.is_dir():
        return path
    if path.exists():
        if path.suffix.lower() in PICKLE_SUFFIXES:
            raise _pickle_refusal(f"{what} {path}", [path])
        raise CheckpointError(f"{what} {path} is a file; give the folder in diffusers' layout (save_pretrained)")
    if _HUB_ID.match(str(spec)):
        try:
            from huggingface_hub import snapshot_download

            return Path(snapshot_download(str(spec), local_files_only=True))
        except Exception:  # noqa: BLE001 - any failure means: not in the cache
            pass
    raise CheckpointError(
        f"{what} {spec} is neither a folder nor a model in the local Hugging Face cache; give the folder "
        "(nothing is downloaded: fetch it first, e.g. huggingface-cli download ID --local-dir FOLDER)"
    )


def _json(path: Path) -> dict[str, Any]:
    if path.stat().st_size > MAX_CONFIG_BYTES:
        raise CheckpointError(f"{path} is {path.stat().st_size:,} bytes; a config is a few kB")
    try:
        data = json.loads(path.read_text())
    except (ValueError, OSError, RecursionError) as exc:  # RecursionError: arrays nested thousands deep
        raise CheckpointError(
            f"{path} is not valid JSON ({str(exc)[:200]}); restore it from the model's source"
        ) from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{path} must hold a JSON object")
    return data


def _refuse_config(path: Path, problems: list[str]) -> None:
    """One error naming the config file and every field in it that is wrong."""
    if problems:
        raise CheckpointError(
            f"{path}: " + "; ".join(problems) + ". Fix the file, or get the model again from its source"
        )


def check_finite(tensors: Iterable[tuple[str, torch.Tensor]], what: str) -> None:
    """Refuse weights that hold NaN or infinity, as the native loader does (such a model samples
    black slides without a word). One tensor at a time, on the weights already loaded."""
    for name, tensor in tensors:
        if tensor.is_floating_point() and tensor.numel() and not bool(torch.isfinite(tensor).all()):
            raise CheckpointError(
                f"{what}: weight {name} holds NaN or infinite values; the model would produce garbage. "
                "Get the weights again from their source"
            )


def check_weights(folder: Path, what: str) -> str | None:
    """Check a component's safetensors weights (headers against sizes); refuse pickles-only.

    Returns the diffusers ``variant`` to load ("fp16" when only ``*.fp16.safetensors`` are there).
    """
    if not (folder / "config.json").is_file():
        raise CheckpointError(f"{what} ({folder}) has no config.json; give a folder written by save_pretrained")
    _json(folder / "config.json")  # size and nesting checked before diffusers or transformers parse it
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        pickles = sorted(p for p in folder.iterdir() if p.suffix.lower() in PICKLE_SUFFIXES)
        if pickles:
            raise _pickle_refusal(f"{what} ({folder})", pickles)
        raise CheckpointError(f"{what} ({folder}) has no .safetensors weights")
    for file in files:
        read_header(file)
    plain = [f for f in files if len(f.name.split(".")) == 2]
    if plain:
        return None
    variants = {f.name.split(".")[-2] for f in files}
    return sorted(variants)[0]


@dataclass
class PipelineFolder:
    """A checked pipeline folder: where its components are and which variant to load."""

    path: Path
    variants: dict[str, str | None]

    @property
    def scheduler_config(self) -> dict[str, Any]:
        return _json(self.path / "scheduler" / "scheduler_config.json")

    def config(self, component: str) -> dict[str, Any]:
        return _json(self.path / component / "config.json")


def check_pipeline(spec: str | Path) -> PipelineFolder:
    """Find and check a pipeline folder before anything is loaded (see the module docstring)."""
    path = resolve(spec, "pipeline")
    missing = [c for c in COMPONENTS if not (path / c).is_dir()]
    if missing:
        raise CheckpointError(
            f"{path} is not a diffusers pipeline folder: it lacks {', '.join(c + '/' for c in missing)}; give the "
            "folder written by StableDiffusionPipeline.save_pretrained (with unet/, vae/, text_encoder/, tokenizer/, "
            "scheduler/)"
        )
    variants = {c: check_weights(path / c, f"the pipeline's {c}") for c in WEIGHT_COMPONENTS}
    if not (path / "scheduler" / "scheduler_config.json").is_file():
        raise CheckpointError(f"{path}/scheduler has no scheduler_config.json")
    folder = PipelineFolder(path, variants)
    _check_configs(folder)
    unet, vae, text = folder.config("unet"), folder.config("vae"), folder.config("text_encoder")
    if unet.get("addition_embed_type") or unet.get("time_cond_proj_dim"):
        raise CheckpointError(
            f"{path}: this UNet needs extra conditioning (SDXL or LCM style: addition_embed_type / time_cond_proj_dim); "
            "only Stable Diffusion 1.x / 2.x style pipelines (text + optional ControlNet) are supported"
        )
    if unet.get("in_channels", 4) != vae.get("latent_channels", 4):
        raise CheckpointError(
            f"{path}: the UNet takes {unet.get('in_channels')} channels but the VAE has {vae.get('latent_channels')} "
            "(an inpainting or depth pipeline?); use a text-to-image pipeline"
        )
    if text.get("model_type") != "clip_text_model":
        raise CheckpointError(
            f"{path}: the text encoder is {text.get('model_type')!r}; only CLIP text encoders (CLIPTextModel) are supported"
        )
    return folder


def _check_configs(folder: PipelineFolder) -> None:
    """Refuse config fields of the wrong type or out of range, naming the file: those that size
    the schedule, the patch, the latent, the prompts, or that diffusers would fail on late."""
    path = folder.path
    _refuse_config(path / "scheduler" / "scheduler_config.json", scheduler_config_problems(folder.scheduler_config))
    vae = folder.config("vae")
    blocks = vae.get("block_out_channels", [64])  # diffusers' AutoencoderKL default
    if isinstance(blocks, list) and 1 <= len(blocks) <= MAX_LEVELS:
        problems = [
            p for i, b in enumerate(blocks) for p in int_problem(f"block_out_channels[{i}]", b, 1, MAX_BLOCK_CHANNELS)
        ]
    else:
        problems = [f"block_out_channels must be a list of 1 to {MAX_LEVELS} integers, got {blocks!r:.60}"]
    problems += int_problem("latent_channels", vae.get("latent_channels", 4), 1, MAX_CHANNELS)
    scaling = vae.get("scaling_factor", 0.18215)
    if not (is_real(scaling) and scaling > 0):
        problems.append(f"scaling_factor must be a positive number, got {scaling!r:.40}")
    _refuse_config(path / "vae" / "config.json", problems)
    unet = folder.config("unet")
    sample = unet.get("sample_size")  # the patch, in latent pixels: an int, or [height, width]
    sides = sample if isinstance(sample, list) and sample else [sample]
    latent_side = MAX_PATCH_SIZE // 2 ** (len(blocks) - 1)
    problems = [p for side in sides for p in int_problem("sample_size", side, 1, latent_side)]
    problems += int_problem("in_channels", unet.get("in_channels", 4), 1, MAX_CHANNELS)
    _refuse_config(path / "unet" / "config.json", problems)
    positions = folder.config("text_encoder").get("max_position_embeddings", 77)
    _refuse_config(
        path / "text_encoder" / "config.json", int_problem("max_position_embeddings", positions, 1, MAX_TEXT_TOKENS)
    )
    tokenizer_config = path / "tokenizer" / "tokenizer_config.json"
    if tokenizer_config.is_file():  # a model_max_length above the text encoder's positions is clamped when loaded
        length = _json(tokenizer_config).get("model_max_length", MAX_TEXT_TOKENS)
        if not (is_int(length) and length >= 1):
            _refuse_config(tokenizer_config, [f"model_max_length must be a positive integer, got {length!r:.40}"])


def check_controlnet(spec: str | Path) -> tuple[Path, str | None]:
    """Find and check a ControlNet folder (or a folder holding ``controlnet/``)."""
    path = resolve(spec, "ControlNet")
    if not (path / "config.json").is_file() and (path / "controlnet" / "config.json").is_file():
        path = path / "controlnet"
    variant = check_weights(path, f"the ControlNet ({path})")
    config = _json(path / "config.json")
    if config.get("_class_name") not in ("ControlNetModel", None):
        raise CheckpointError(f"{path} is not a ControlNetModel folder; give the ControlNet's save_pretrained folder")
    channels = config.get("conditioning_channels", 3)
    _refuse_config(path / "config.json", int_problem("conditioning_channels", channels, 1, MAX_CLASSES))
    return path, variant


def check_lora(spec: str | Path) -> Path:
    """A LoRA safetensors file (checked header); pickled LoRA files are refused."""
    path = Path(spec).expanduser()
    if path.is_dir():
        files = sorted(path.glob("*.safetensors"))
        if len(files) != 1:
            pickles = sorted(p for p in path.iterdir() if p.suffix.lower() in PICKLE_SUFFIXES)
            if not files and pickles:
                raise _pickle_refusal(f"the LoRA folder {path}", pickles)
            raise CheckpointError(f"LoRA folder {path} must hold exactly one .safetensors file; give the file")
        path = files[0]
    if not path.is_file():
        raise CheckpointError(f"LoRA file {path} does not exist; check the path")
    if path.suffix.lower() in PICKLE_SUFFIXES:
        raise _pickle_refusal(f"the LoRA file {path}", [path])
    if path.suffix.lower() != ".safetensors":
        raise CheckpointError(f"LoRA file {path} is not a .safetensors file; give the LoRA's safetensors weights")
    if not read_header(path):
        raise CheckpointError(f"LoRA file {path} holds no weights; give the LoRA's trained safetensors file")
    return path


def folder_sha256(path: Path, components: tuple[str, ...] = COMPONENTS) -> str:
    """One SHA-256 over a folder's files (their relative paths and SHA-256s); pickles are not hashed
    (they are never read)."""
    digest = hashlib.sha256()
    roots = [path / c for c in components] if components else [path]
    for root in roots:
        for file in sorted(p for p in root.rglob("*") if p.is_file()):
            if file.suffix.lower() in PICKLE_SUFFIXES or file.name.startswith("."):
                continue
            digest.update(f"{file.relative_to(path).as_posix()}:{sha256_file(file)}\n".encode())
    return digest.hexdigest()


@dataclass
class ClassSpec:
    """The classes of the layout (label 0 = unknown) and how a ControlNet sees them."""

    class_names: list[str]
    class_colors: list[tuple[int, int, int]]
    conditioning: str
    pixel_size_um: float | None = None


def read_classes(folders: list[Path], conditioning: str | None, channels: int | None) -> ClassSpec:
    """The class spec from the first ``diffinfinite.json`` among ``folders`` (ControlNet first), else
    defaults: one-hot with one class per ControlNet input channel when it has other than 3, else
    DiffInfinite's 10 classes and palette, colour-coded. ``conditioning`` overrides the mode."""
    data: dict[str, Any] = {}
    source = Path(CLASSES_FILE)
    for folder in folders:
        if (folder / CLASSES_FILE).is_file():
            source = folder / CLASSES_FILE
            data = _json(source)
            break
    mode = conditioning or data.get("conditioning") or ("onehot" if channels not in (None, 3) else "colors")
    if mode not in MODES:
        raise CheckpointError(f"conditioning must be one of {', '.join(MODES)}, not {mode!r}")
    count = channels if mode == "onehot" and channels else DEFAULT_CLASSES
    names = data.get("class_names") or default_class_names(count)
    colors = data.get("class_colors") or default_class_colors(len(names))
    if not (
        isinstance(names, list) and all(isinstance(n, str) and n.strip() for n in names) and 2 <= len(names) <= 256
    ):
        raise CheckpointError(f"{source}: class_names must be a list of 2 to 256 names (label 0 first)")
    ok = isinstance(colors, list) and len(colors) == len(names)
    ok = ok and all(isinstance(c, list | tuple) and len(c) == 3 and all(isinstance(v, int) and 0 <= v <= 255 for v in c)
                    for c in colors)  # fmt: skip
    if not ok:
        raise CheckpointError(f"{source}: class_colors must list one [R, G, B] (0-255) per class")
    if mode == "onehot" and channels and channels != len(names):
        raise CheckpointError(
            f"the ControlNet takes {channels} conditioning channels but one-hot conditioning of {len(names)} classes "
            f"needs {len(names)}; fix {CLASSES_FILE} or use --conditioning colors"
        )
    if mode == "colors" and channels not in (None, 3):
        raise CheckpointError(f"colour conditioning needs a ControlNet with 3 input channels, this one has {channels}")
    pixel = data.get("pixel_size_um")
    low, high = PIXEL_SIZE_RANGE_UM
    if pixel is not None and not (is_real(pixel) and low <= pixel <= high):
        raise CheckpointError(
            f"{source}: pixel_size_um must be the size of a pixel in micrometres, a number from {low} to {high:g} "
            f"(0.5 at 20x), or null when unknown; got {pixel!r:.40}"
        )
    return ClassSpec(list(names), [tuple(c) for c in colors], mode, None if pixel is None else float(pixel))
