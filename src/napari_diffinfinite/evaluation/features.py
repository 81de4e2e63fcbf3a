"""Feature extractors for the distance metrics: Inception-v3, a user's model, or a random network.

An extractor maps a batch of tiles, ``(N, 3, H, W)`` uint8 on its device, to features
``(N, D)`` and, when it has a classifier head, class logits (for the Inception Score).
Named by a spec string (``--features`` on the command line):

* ``inception`` (default): the standard FID network, TensorFlow's Inception-v3 of
  2015-12-05 as ported by torch-fidelity (``FeatureExtractorInceptionV3``: 2048 pool
  features, 1008 logits). torch-fidelity's package ``__init__`` imports torchvision (for
  its CLIP, VGG and dataset helpers), which this project cannot install, so its Inception
  module is imported on its own (:func:`_torch_fidelity_inception_class`). Its weights
  file ``weights-inception-2015-12-05-6726825d.pth`` is never downloaded here: it is taken
  from ``--inception-weights PATH``, the environment variable
  ``DIFFINFINITE_INCEPTION_WEIGHTS``, or torch's hub cache
  (``$TORCH_HOME/hub/checkpoints/``, where torch-fidelity itself saves it), and it is
  checked to hold only tensors before it is loaded.
* ``hf:FOLDER``: a local Hugging Face ``transformers`` model folder (e.g. DINOv2 or a
  pathology foundation model), loaded with ``local_files_only=True`` and without remote
  code; features are the pooled output (or the first token of the last hidden state).
* ``timm:ARCH:WEIGHTS``: a timm architecture with a local weights file (safetensors or a
  tensors-only ``.pth``); features are the pooled, head-less output.
* ``torchscript:FILE``: a TorchScript module returning ``(N, D)`` features. Loading a
  TorchScript file runs the code it contains, so it is refused unless the caller passes
  ``trust_code=True`` (``--trust-torchscript``): use it only for files you made or trust.
* ``random[:SEED]``: a small convolutional network with random weights (fixed by the
  seed). It needs no weights and still separates different image statistics, which is
  what the tests need; its numbers are not comparable with published FIDs.

User models get tiles resized to ``input_size`` (224) and normalised with the ImageNet
mean and standard deviation.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
import types
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .distances import EvaluationError

__all__ = [
    "INCEPTION_WEIGHTS_NAME",
    "FeatureExtractor",
    "InceptionV3Features",
    "RandomConvFeatures",
    "TorchScriptFeatures",
    "HuggingFaceFeatures",
    "TimmFeatures",
    "find_inception_weights",
    "load_feature_extractor",
    "extract_features",
    "default_device",
]

INCEPTION_WEIGHTS_NAME = "weights-inception-2015-12-05-6726825d.pth"
INCEPTION_WEIGHTS_ENV = "DIFFINFINITE_INCEPTION_WEIGHTS"
_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)


def default_device() -> str:
    """``"cuda"`` when a GPU is present, else ``"cpu"``."""
    return "cuda" if torch.cuda.is_available() else "cpu"


class FeatureExtractor(nn.Module):
    """Base: ``forward(uint8 (N, 3, H, W)) -> (features (N, D), logits (N, C) or None)``."""

    name: str = "features"
    has_logits: bool = False

    def describe(self) -> dict:
        return {"name": self.name, "has_logits": self.has_logits}


def _tensors_only(path: Path) -> dict:
    """Load a state dict that holds only tensors and plain containers; refuse anything else."""
    from ..errors import CheckpointError
    from ..model.torch_file import check_torch_zip

    try:
        check_torch_zip(path)  # not a zip bomb, not a legacy format
    except CheckpointError as exc:
        raise EvaluationError(f"{exc}. Use the original weights file or a safetensors file") from None
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # the safe unpickler raises many kinds
        raise EvaluationError(
            f"{path} is not a plain tensor file (it holds Python objects or is corrupt): {exc}. "
            f"Use the original weights file or a safetensors file"
        ) from exc


def _state_dict_file(path: Path) -> dict:
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    return _tensors_only(path)


def find_inception_weights(path: str | os.PathLike | None = None) -> Path:
    """The Inception-v3 weights file: ``path``, else $DIFFINFINITE_INCEPTION_WEIGHTS, else torch's hub cache."""
    candidates = [Path(path)] if path else []
    if not path and os.environ.get(INCEPTION_WEIGHTS_ENV):
        candidates.append(Path(os.environ[INCEPTION_WEIGHTS_ENV]))
    if not path:
        candidates.append(Path(torch.hub.get_dir()) / "checkpoints" / INCEPTION_WEIGHTS_NAME)
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    looked = ", ".join(str(c) for c in candidates)
    raise EvaluationError(
        f"the Inception-v3 weights for FID/KID/IS are not on this machine (looked at: {looked}). "
        f"Download {INCEPTION_WEIGHTS_NAME} from torch-fidelity's v0.2.0 release and put it at "
        f"{Path(torch.hub.get_dir()) / 'checkpoints' / INCEPTION_WEIGHTS_NAME}, or pass --inception-weights PATH "
        f"(or set {INCEPTION_WEIGHTS_ENV}); or use another extractor with --features"
    )


def _torch_fidelity_inception_class() -> type:
    """torch-fidelity's ``FeatureExtractorInceptionV3``, imported without its package ``__init__``.

    The package ``__init__`` pulls in torchvision; the Inception module needs only torch.
    If the whole package imports (torchvision present), it is used as it is.
    """
    try:
        from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

        return FeatureExtractorInceptionV3
    except ImportError as exc:
        spec = importlib.util.find_spec("torch_fidelity")
        if spec is None or not spec.submodule_search_locations:
            raise EvaluationError(
                "Inception-v3 features need torch-fidelity's network: pip install --no-deps torch-fidelity "
                "(--no-deps: its torchvision requirement is not needed here and would replace torch)"
            ) from exc
    sys.modules.pop("torch_fidelity", None)
    package = types.ModuleType("torch_fidelity")
    package.__path__ = list(spec.submodule_search_locations)
    package.__spec__ = spec
    sys.modules["torch_fidelity"] = package
    module = importlib.import_module("torch_fidelity.feature_extractor_inceptionv3")
    return module.FeatureExtractorInceptionV3


class InceptionV3Features(FeatureExtractor):
    """The standard FID Inception-v3 (torch-fidelity's port): 2048 pool features and 1008 logits."""

    name = "inception-v3"
    has_logits = True

    def __init__(self, weights: str | os.PathLike | None = None) -> None:
        super().__init__()
        path = find_inception_weights(weights)
        _tensors_only(path)  # refuse a file that would run code: the library then loads it unrestricted
        cls = _torch_fidelity_inception_class()
        try:
            self.net = cls("inception-v3-compat", ["2048", "logits_unbiased"], feature_extractor_weights_path=str(path))
        except RuntimeError as exc:
            raise EvaluationError(f"{path} does not fit torch-fidelity's Inception-v3: {exc}") from exc
        self.weights_path = path

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        features, logits = self.net(images)
        return features, logits

    def describe(self) -> dict:
        return {**super().describe(), "weights": str(self.weights_path)}


class RandomConvFeatures(FeatureExtractor):
    """A small random-weight CNN (fixed by ``seed``): 4 strided conv layers, mean and std pooling.

    For tests and smoke runs without weights; not comparable with published numbers.
    """

    has_logits = False

    def __init__(self, seed: int = 0, width: int = 32, input_size: int = 128) -> None:
        super().__init__()
        self.name = f"random-conv:{seed}"
        self.input_size = input_size
        generator = torch.Generator().manual_seed(seed)
        layers: list[nn.Module] = []
        channels = 3
        for i in range(4):
            out = width * 2 ** min(i, 2)
            conv = nn.Conv2d(channels, out, 3, stride=2, padding=1)
            with torch.no_grad():
                conv.weight.normal_(0, (2.0 / (channels * 9)) ** 0.5, generator=generator)
                conv.bias.zero_()
            layers += [conv, nn.ReLU()]
            channels = out
        self.body = nn.Sequential(*layers)
        self.requires_grad_(False)
        self.eval()

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, None]:
        x = _resize_normalise(images, self.input_size)
        h = self.body(x)
        return torch.cat([h.mean(dim=(2, 3)), h.std(dim=(2, 3))], dim=1), None


def _resize_normalise(images: torch.Tensor, size: int) -> torch.Tensor:
    x = images.float() / 255.0
    if x.shape[-2:] != (size, size):
        x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    mean = torch.tensor(_IMAGENET_MEAN, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(_IMAGENET_STD, device=x.device).view(1, 3, 1, 1)
    return (x - mean) / std


def _flatten_features(out) -> torch.Tensor:
    if isinstance(out, (tuple, list)):
        out = out[0]
    if isinstance(out, dict):
        out = next(iter(out.values()))
    if not isinstance(out, torch.Tensor):
        raise EvaluationError(f"the feature model returned {type(out).__name__}, not a tensor of features")
    if out.ndim == 4:
        out = out.mean(dim=(2, 3))
    elif out.ndim == 3:
        out = out[:, 0]
    return out.reshape(out.shape[0], -1)


class TorchScriptFeatures(FeatureExtractor):
    """A user's TorchScript feature model (runs the file's code: needs ``trust_code=True``)."""

    def __init__(self, path: str | os.PathLike, *, trust_code: bool = False, input_size: int = 224) -> None:
        super().__init__()
        path = Path(path)
        if not trust_code:
            raise EvaluationError(
                f"loading the TorchScript model {path} runs the code it contains; pass --trust-torchscript "
                f"(trust_code=True) if you made this file or trust its source"
            )
        if not path.is_file():
            raise EvaluationError(f"TorchScript feature model {path} does not exist")
        self.net = torch.jit.load(str(path), map_location="cpu").eval()
        self.name = f"torchscript:{path.name}"
        self.input_size = input_size

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, None]:
        return _flatten_features(self.net(_resize_normalise(images, self.input_size))), None


class HuggingFaceFeatures(FeatureExtractor):
    """A local Hugging Face transformers vision model (no download, no remote code)."""

    def __init__(self, folder: str | os.PathLike, *, input_size: int = 224) -> None:
        super().__init__()
        folder = Path(folder)
        if not (folder / "config.json").is_file():
            raise EvaluationError(f"{folder} is not a Hugging Face model folder (no config.json)")
        try:
            from transformers import AutoModel
        except ImportError as exc:
            raise EvaluationError("hf: feature models need the transformers package: pip install transformers") from exc
        self.net = AutoModel.from_pretrained(str(folder), local_files_only=True, trust_remote_code=False).eval()
        self.name = f"hf:{folder.name}"
        self.input_size = input_size

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, None]:
        out = self.net(pixel_values=_resize_normalise(images, self.input_size))
        pooled = getattr(out, "pooler_output", None)
        return (pooled if pooled is not None else out.last_hidden_state[:, 0]), None


class TimmFeatures(FeatureExtractor):
    """A timm architecture with local weights (the classifier head removed)."""

    def __init__(self, arch: str, weights: str | os.PathLike, *, input_size: int = 224) -> None:
        super().__init__()
        try:
            import timm
        except ImportError as exc:
            raise EvaluationError(f"timm: feature models need the timm package (pip install timm): {exc}") from exc
        weights = Path(weights)
        if not weights.is_file():
            raise EvaluationError(f"timm weights file {weights} does not exist")
        self.net = timm.create_model(arch, pretrained=False, num_classes=0)
        state = {
            k: v for k, v in _state_dict_file(weights).items() if not k.startswith(("head.", "fc.", "classifier."))
        }
        missing, _unexpected = self.net.load_state_dict(state, strict=False)
        if missing:
            raise EvaluationError(f"{weights} does not fit timm model {arch!r}: missing {missing[:5]}")
        self.net.eval()
        self.name = f"timm:{arch}"
        self.input_size = input_size

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, None]:
        return _flatten_features(self.net(_resize_normalise(images, self.input_size))), None


def load_feature_extractor(
    spec: str = "inception",
    *,
    inception_weights: str | os.PathLike | None = None,
    trust_torchscript: bool = False,
    input_size: int = 224,
    device: str | torch.device | None = None,
) -> FeatureExtractor:
    """The extractor a spec names (see the module docstring), on ``device`` (default: GPU if present)."""
    kind, _, rest = spec.partition(":")
    kind = kind.strip().lower()
    if kind == "inception":
        extractor: FeatureExtractor = InceptionV3Features(inception_weights)
    elif kind == "random":
        extractor = RandomConvFeatures(int(rest) if rest else 0)
    elif kind == "torchscript":
        extractor = TorchScriptFeatures(rest, trust_code=trust_torchscript, input_size=input_size)
    elif kind == "hf":
        extractor = HuggingFaceFeatures(rest, input_size=input_size)
    elif kind == "timm":
        arch, _, weights = rest.partition(":")
        if not arch or not weights:
            raise EvaluationError(f"feature spec {spec!r}: write timm:ARCH:WEIGHTS_FILE")
        extractor = TimmFeatures(arch, weights, input_size=input_size)
    else:
        raise EvaluationError(
            f"unknown feature extractor {spec!r}: use inception, random[:SEED], hf:FOLDER, timm:ARCH:WEIGHTS "
            f"or torchscript:FILE (with --trust-torchscript)"
        )
    return extractor.to(device or default_device())


@torch.no_grad()
def extract_features(
    extractor: FeatureExtractor,
    tiles: Iterable[np.ndarray],
    *,
    batch_size: int = 32,
    progress: Callable[[int], None] | None = None,
) -> tuple[np.ndarray, np.ndarray | None]:
    """Features (and logits, if the extractor has them) of (H, W, 3) uint8 tiles, in order.

    ``progress(n)`` is called with the number of tiles done after each batch.
    """
    device = next(iter(extractor.parameters()), torch.empty(0)).device
    feats: list[np.ndarray] = []
    logits: list[np.ndarray] = []
    batch: list[np.ndarray] = []
    done = 0

    def flush() -> None:
        nonlocal done
        x = torch.from_numpy(np.stack(batch)).permute(0, 3, 1, 2).contiguous().to(device)
        f, lg = extractor(x)
        feats.append(f.float().cpu().numpy())
        if lg is not None:
            logits.append(lg.float().cpu().numpy())
        done += len(batch)
        batch.clear()
        if progress is not None:
            progress(done)

    for tile in tiles:
        if tile.ndim != 3 or tile.shape[-1] != 3 or tile.dtype != np.uint8:
            raise EvaluationError(f"tiles must be (H, W, 3) uint8, got {tile.shape} {tile.dtype}")
        if batch and tile.shape != batch[0].shape:
            flush()
        batch.append(tile)
        if len(batch) >= batch_size:
            flush()
    if batch:
        flush()
    if not feats:
        raise EvaluationError("no tiles to extract features from")
    return np.concatenate(feats), (np.concatenate(logits) if logits else None)
