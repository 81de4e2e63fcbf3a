"""A diffusers pipeline (+ ControlNet, + LoRA, + prompts) as the image model of a generation job.

:func:`load_diffusers` turns :class:`DiffusersOptions` into a :class:`DiffusersModel`, which the
engine's job uses like a DiffInfinite model: ``config`` (classes, patch size, timesteps,
defaults), ``unet`` (the network the sampler calls), ``sha256`` (pipeline, ControlNet and LoRA
together: resuming with another one is refused), ``source``, and
:meth:`DiffusersModel.sampler_options` (the diffusers scheduler and the prompt-compositing
denoiser for :class:`~napari_diffinfinite.sampling.sampler.RandomPatchSampler`). The codec is
the pipeline's VAE with Stable Diffusion's scaling (:class:`~napari_diffinfinite.model.codec.VAECodec`
``signed``, ``latent_scale = 1 / scaling_factor``), decoded by the streaming tiled decoder.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import torch

from ..errors import CheckpointError, SettingsError
from ..model.codec import VAECodec
from ..model.pretrained import sha256_file
from . import require
from .conditioning import LayoutConditioning
from .denoiser import DiffusersDenoiser, DiffusersNetwork
from .folder import check_controlnet, check_finite, check_lora, check_pipeline, folder_sha256, read_classes
from .schedule import SCHEDULERS, DiffusersSchedule, make_scheduler
from .text import PromptTable, encode_prompts, resolve_class_prompts

DEFAULT_STEPS = 50
DEFAULT_GUIDANCE = 7.5  # diffusers' default guidance_scale; omega = guidance - 1


@dataclass
class DiffusersOptions:
    """What a diffusers generation uses: the pipeline folder (or cached hub id), optional
    ControlNet folder and LoRA safetensors file, the prompts (``class_prompts`` by label or
    class name), the scheduler ("ddim" or "dpm++"), the ControlNet's strength and how it sees
    the layout (``conditioning`` "colors"/"onehot"; None = its ``diffinfinite.json`` or its
    input channels). The guidance scale is the job's omega + 1."""

    pipeline: str | Path
    prompt: str = ""
    negative_prompt: str | None = None
    class_prompts: dict[int | str, str] = field(default_factory=dict)
    controlnet: str | Path | None = None
    lora: str | Path | None = None
    scheduler: str = "ddim"
    controlnet_scale: float = 1.0
    conditioning: str | None = None

    def check(self) -> None:
        """Refuse bad options before anything is loaded."""
        if self.scheduler not in SCHEDULERS:
            raise SettingsError(f"unknown scheduler {self.scheduler!r}; choose one of {', '.join(SCHEDULERS)}")
        if not isinstance(self.prompt, str) or not (
            self.negative_prompt is None or isinstance(self.negative_prompt, str)
        ):
            raise SettingsError("the prompt and the negative prompt must be text")
        if not (isinstance(self.controlnet_scale, int | float) and 0 <= self.controlnet_scale < 1e3):
            raise SettingsError(f"the ControlNet scale must be a number >= 0, got {self.controlnet_scale!r}")


@dataclass
class DiffusersConfig:
    """The parts of a model config the engine reads, for a diffusers pipeline."""

    class_names: list[str]
    class_colors: list[tuple[int, int, int]]
    patch_size: int
    scale_factor: int
    timesteps: int
    kind: str = "image"
    sampling_steps: int = DEFAULT_STEPS
    eta: float = 0.0
    pixel_size_um: float | None = None
    codec: str = "diffusers-vae"
    pixel_unshuffle: int = 1
    latent_scale: float = 1.0
    default_omega: float = DEFAULT_GUIDANCE - 1.0
    steps_offset: int = 0  # the scheduler's: "leading" timesteps are shifted by it

    @property
    def latent_patch(self) -> int:
        return self.patch_size // self.scale_factor

    @property
    def max_steps(self) -> int:
        """The most sampling steps the scheduler can take: with an offset, its last timestep
        must stay inside the training schedule (1000 steps and offset 1 would index step 1000)."""
        return self.timesteps - self.steps_offset


class DiffusersModel:
    """A loaded pipeline with its prompts, ready for the random-patch sampler."""

    def __init__(self, pipe, network: DiffusersNetwork, config: DiffusersConfig, options: DiffusersOptions,
                 prompts: PromptTable, record: dict[str, Any], scheduler_config: dict[str, Any]) -> None:  # fmt: skip
        self.pipe, self.unet, self.config, self.options = pipe, network, config, options
        self.prompts, self.record, self.scheduler_config = prompts, record, scheduler_config
        parts = [record["pipeline"]["sha256"]] + [record[k]["sha256"] for k in ("controlnet", "lora") if record.get(k)]
        self.sha256 = parts[0] if len(parts) == 1 else hashlib.sha256("+".join(parts).encode()).hexdigest()
        self.source = f"diffusers pipeline {record['pipeline']['path']}"

    @property
    def device(self) -> torch.device:
        return next(self.unet.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.unet.parameters()).dtype

    @property
    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.unet.parameters())

    def to(self, device: str | torch.device | None = None, dtype: torch.dtype | None = None) -> DiffusersModel:
        self.unet.to(device=device, dtype=dtype)
        self.unet.set_embeddings(self.unet.embeddings)
        return self

    def condition(self, options: DiffusersOptions) -> DiffusersModel:
        """Use the prompts (and scheduler, ControlNet scale) of ``options`` from now on; they must
        name the pipeline, ControlNet and LoRA this model was loaded from. The prompts are
        encoded again (a loaded pipeline serves many slides)."""
        options.check()
        loaded = self.options
        for what in ("pipeline", "controlnet", "lora"):
            mine, theirs = getattr(loaded, what), getattr(options, what)
            if (mine is None) != (theirs is None) or (mine is not None and Path(mine) != Path(theirs)):
                raise SettingsError(
                    f"the loaded model has {what} {mine or 'none'} but {theirs or 'none'} was asked for; load that one"
                )
        if options.conditioning not in (None, loaded.conditioning):
            raise SettingsError("the ControlNet conditioning is chosen when the ControlNet is loaded; load it again")
        class_prompts = resolve_class_prompts(options.class_prompts, self.config.class_names)
        text_device = next(self.pipe.text_encoder.parameters()).device
        self.prompts = encode_prompts(self.pipe, options.prompt, options.negative_prompt, class_prompts, text_device)
        self.unet.set_embeddings(self.prompts.embeddings)
        self.unet.controlnet_scale = float(options.controlnet_scale)
        self.options = options
        return self

    def describe(self) -> dict[str, Any]:
        """What the Checkpoints widget and ``info`` show about the loaded model (as
        :func:`~napari_diffinfinite.engine.describe_model` does for DiffInfinite models)."""
        c = self.config
        cn = self.record.get("controlnet")
        return {
            "kind": "image",
            "family": "diffusers",
            "architecture": "diffusers UNet2DConditionModel"
            + (" + ControlNet" if cn else "")
            + (" + LoRA" if self.record.get("lora") else ""),
            "codec": "pipeline VAE",
            "patch_size": c.patch_size,
            "num_classes": len(c.class_names),
            "class_names": list(c.class_names),
            "class_colors": [tuple(col) for col in c.class_colors],
            "parameters": self.num_parameters,
            "device": str(self.device),
            "dtype": str(self.dtype).removeprefix("torch."),
            "source": self.source,
            "sha256": self.sha256,
            "pixel_size_um": c.pixel_size_um,
            "sampling_steps": c.sampling_steps,
            "controlnet": bool(cn),
            "scheduler": self.options.scheduler,
        }

    def provenance(self, omega: float, steps: int, eta: float) -> dict[str, Any]:
        """What the slide's provenance records about the model and its conditioning."""
        o = self.options
        return {
            **self.record,
            "prompt": o.prompt,
            "negative_prompt": o.negative_prompt,
            "class_prompts": {str(k): v for k, v in sorted(self.class_prompts.items())},
            "scheduler": o.scheduler,
            "scheduler_class": "DDIMScheduler" if o.scheduler == "ddim" else "DPMSolverMultistepScheduler",
            "prediction_type": self.scheduler_config.get("prediction_type", "epsilon"),
            "guidance_scale": omega + 1.0,
            "steps": steps,
            "eta": eta,
            "conditioning": self.unet.conditioning.mode if self.unet.conditioning is not None else None,
            "controlnet_scale": o.controlnet_scale if o.controlnet is not None else None,
        }

    @property
    def class_prompts(self) -> dict[int, str]:
        return resolve_class_prompts(self.options.class_prompts, self.config.class_names)

    def sampler_options(self, *, steps: int, eta: float, channels: int) -> dict[str, Any]:
        """The ``schedule`` and ``denoiser_class`` the random-patch sampler runs this model with."""
        if self.options.scheduler != "ddim" and eta:
            raise SettingsError("eta is DDIM's stochasticity; DPM-Solver++ takes none: leave --eta out")
        scheduler = make_scheduler(self.options.scheduler, self.scheduler_config)
        denoiser = partial(
            DiffusersDenoiser, prompt_of_label=self.prompts.prompt_of_label, negative_row=self.prompts.negative_row
        )
        return {"schedule": DiffusersSchedule(scheduler, steps, channels=channels, eta=eta), "denoiser_class": denoiser}


def _file_record(path: Path) -> dict[str, str]:
    return {"path": str(path), "sha256": sha256_file(path)}


def load_diffusers(
    options: DiffusersOptions, *, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32
) -> tuple[DiffusersModel, VAECodec]:
    """Load the pipeline, ControlNet and LoRA of ``options``, encode its prompts; the model and its codec.

    Everything is checked first (folders, safetensors headers, no pickles: :mod:`.folder`);
    every user-caused problem is a CheckpointError or SettingsError that says how to fix it.
    """
    options.check()
    require(lora=options.lora is not None)
    folder = check_pipeline(options.pipeline)
    controlnet_path = variant_cn = None
    if options.controlnet is not None:
        controlnet_path, variant_cn = check_controlnet(options.controlnet)
    lora_path = check_lora(options.lora) if options.lora is not None else None

    from diffusers import AutoencoderKL, ControlNetModel, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    device = torch.device(device)
    path = folder.path
    common = {"local_files_only": True, "use_safetensors": True}
    try:
        unet = UNet2DConditionModel.from_pretrained(path, subfolder="unet", variant=folder.variants["unet"], **common)
        vae = AutoencoderKL.from_pretrained(path, subfolder="vae", variant=folder.variants["vae"], **common)
        text_encoder = CLIPTextModel.from_pretrained(
            path, subfolder="text_encoder", variant=folder.variants["text_encoder"], **common
        )
        tokenizer = CLIPTokenizer.from_pretrained(path, subfolder="tokenizer", local_files_only=True)
        controlnet = (
            ControlNetModel.from_pretrained(controlnet_path, variant=variant_cn, **common)
            if controlnet_path is not None
            else None
        )
    except (OSError, ValueError, TypeError, KeyError, RuntimeError) as exc:
        raise CheckpointError(f"cannot load the pipeline {path}: {exc}") from None
    for what, module in (("unet", unet), ("vae", vae), ("text_encoder", text_encoder)):
        check_finite(module.state_dict().items(), f"{path / what}")
    if controlnet is not None:
        check_finite(controlnet.state_dict().items(), f"the ControlNet {controlnet_path}")
    # Every prompt is padded to model_max_length tokens; more than the text encoder has positions
    # cannot be encoded (and transformers' "unset" is 10**30), so it is clamped to those positions.
    tokenizer.model_max_length = min(tokenizer.model_max_length, text_encoder.config.max_position_embeddings)
    scheduler_config = dict(folder.scheduler_config)
    pipe = StableDiffusionPipeline(
        vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
        scheduler=make_scheduler(options.scheduler, scheduler_config),
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )  # fmt: skip
    pipe.set_progress_bar_config(disable=True)
    record: dict[str, Any] = {"pipeline": {"path": str(path), "sha256": folder_sha256(path)}}
    if lora_path is not None:
        from safetensors.torch import load_file

        weights = load_file(str(lora_path))
        check_finite(weights.items(), f"the LoRA {lora_path}")
        try:
            pipe.load_lora_weights(weights)
        except (ValueError, KeyError, RuntimeError) as exc:
            raise CheckpointError(f"the LoRA {lora_path} does not fit this pipeline: {exc}") from None
        if not any(pipe.get_list_adapters().values()):  # diffusers only logs a warning
            raise CheckpointError(
                f"none of the weights of the LoRA {lora_path} belong to this pipeline's UNet or text encoder "
                "(diffusers' names start with unet. or text_encoder.); give a LoRA trained for this pipeline"
            )
        record["lora"] = _file_record(lora_path)
    if controlnet_path is not None:
        record["controlnet"] = {"path": str(controlnet_path), "sha256": folder_sha256(controlnet_path, ())}

    channels = controlnet.config.conditioning_channels if controlnet is not None else None
    classes = read_classes([p for p in (controlnet_path, path) if p is not None], options.conditioning, channels)
    scale = 2 ** (len(vae.config.block_out_channels) - 1)
    conditioning = LayoutConditioning(classes.conditioning, classes.class_colors, scale) if controlnet else None
    sample_size = unet.config.sample_size
    sample_size = sample_size if isinstance(sample_size, int) else int(sample_size[0])
    config = DiffusersConfig(
        class_names=classes.class_names, class_colors=classes.class_colors, patch_size=sample_size * scale,
        scale_factor=scale, timesteps=int(scheduler_config.get("num_train_timesteps", 1000)),
        steps_offset=int(scheduler_config.get("steps_offset", 0)), pixel_size_um=classes.pixel_size_um, latent_scale=1.0 / vae.config.scaling_factor,
    )  # fmt: skip
    class_prompts = resolve_class_prompts(options.class_prompts, config.class_names)

    pipe.to(device)
    if controlnet is not None:
        controlnet.to(device)
    prompts = encode_prompts(pipe, options.prompt, options.negative_prompt, class_prompts, device)
    network = DiffusersNetwork(unet, controlnet, conditioning, options.controlnet_scale).eval()
    network.to(device=device, dtype=dtype)
    network.set_embeddings(prompts.embeddings)
    codec_dtype = torch.float32 if device.type == "cpu" else dtype
    vae.to(device=device, dtype=codec_dtype)
    codec = VAECodec(vae, latent_scale=1.0 / vae.config.scaling_factor, sample=True, signed=True)
    codec.name = "diffusers-vae"  # the pipeline's own VAE, Stable Diffusion scaling
    return DiffusersModel(pipe, network, config, options, prompts, record, scheduler_config), codec


def describe_pipeline(spec: str | Path) -> dict[str, Any]:
    """What ``diffinfinite info`` prints for a pipeline (or ControlNet) folder, from its configs only."""
    path = Path(spec).expanduser()
    if (path / "config.json").is_file() and not (path / "unet").is_dir():
        cn_path, _ = check_controlnet(path)
        cfg = _read(cn_path / "config.json")
        classes = read_classes([cn_path], None, cfg.get("conditioning_channels", 3))
        return {
            "type": "diffusers ControlNet",
            "path": str(cn_path),
            "conditioning_channels": cfg.get("conditioning_channels", 3),
            "conditioning": classes.conditioning,
            "classes": {str(i): n for i, n in enumerate(classes.class_names)},
            "cross_attention_dim": cfg.get("cross_attention_dim"),
            "sha256": folder_sha256(cn_path, ()),
        }
    folder = check_pipeline(path)
    unet, vae, text = folder.config("unet"), folder.config("vae"), folder.config("text_encoder")
    scheduler = folder.scheduler_config
    blocks = vae.get("block_out_channels", [64])  # checked; diffusers' default
    scale = 2 ** (len(blocks) - 1)
    sample = unet.get("sample_size", 64)
    sample = sample if isinstance(sample, int) else sample[0]
    classes = read_classes([folder.path], None, None)
    return {
        "type": "diffusers pipeline",
        "path": str(folder.path),
        "unet": f"UNet2DConditionModel(in_channels={unet.get('in_channels')}, "
        f"block_out_channels={unet.get('block_out_channels')}, cross_attention_dim={unet.get('cross_attention_dim')})",
        "text_encoder": f"CLIPTextModel(hidden_size={text.get('hidden_size')}, layers={text.get('num_hidden_layers')})",
        "vae": f"AutoencoderKL(latent_channels={vae.get('latent_channels')}, scaling_factor={vae.get('scaling_factor')})",
        "patch_size": sample * scale,
        "latent_patch": sample,
        "scheduler": scheduler.get("_class_name"),
        "prediction_type": scheduler.get("prediction_type", "epsilon"),
        "num_train_timesteps": scheduler.get("num_train_timesteps"),
        "weights": {c: "safetensors" + (f" ({v})" if v else "") for c, v in folder.variants.items()},
        "classes": {str(i): n for i, n in enumerate(classes.class_names)},
        "sha256": folder_sha256(folder.path),
    }


def _read(path: Path) -> dict[str, Any]:
    from .folder import _json

    return _json(path)
