"""One call to evaluate a synthetic set against a real set: the engine behind ``diffinfinite evaluate``.

:func:`evaluate` samples tiles reproducibly from both sets (:mod:`.tiles`), extracts
features once per set (:mod:`.features`), and computes, as asked:

* image quality: Fréchet distance (FID with Inception-v3), KID, Inception Score (when the
  extractor has logits) and improved precision/recall (:mod:`.distances`);
* Patch-FID on matched multi-scale crops (:mod:`.patches`);
* privacy against a training set (authenticity) and, with a held-out real set too, the
  C_T data-copying statistic (:mod:`.privacy`);
* for synthetic slide stores: the seam score at each period (:mod:`.seams`) and the
  layout adherence to the stored labels (:mod:`.adherence`).

Slides are compared at one pixel size (``pixel_size``: by default the coarsest pixel size
among the slides when they differ; see :func:`.tiles.match_pixel_size`).

It returns a JSON-ready dict; :mod:`.report` writes it with pictures. Everything is
reproducible for a given seed (tile positions, crop specs, KID subsets, k-means cells).
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, is_dataclass

import numpy as np

from .. import __version__
from ..errors import DiffInfiniteError
from ..progress import CancelToken, ProgressCallback, ProgressEvent
from .distances import EvaluationError, fid_from_features, inception_score, kernel_distance, precision_recall
from .features import FeatureExtractor, extract_features, load_feature_extractor
from .seams import DEFAULT_EDGE_DISTANCE
from .tiles import PIXEL_SIZE_TOLERANCE, SlideSource, TileSample, match_pixel_size, open_source, sample_tiles

__all__ = ["EvaluationSettings", "EvaluationResult", "evaluate"]

Paths = Sequence[str | os.PathLike]


@dataclass
class EvaluationSettings:
    """What to sample and compute; the defaults suit a quick look (raise ``tiles`` for papers: 10k+)."""

    tiles: int = 256
    tile_size: int = 256
    level: int = 0
    pixel_size: str | float = "auto"  # um/px to compare at; "auto": the coarsest slide's when they differ; "native"
    seed: int = 0
    include_glass: bool = False
    min_tissue: float = 0.5
    features: str = "inception"
    inception_weights: str | None = None
    trust_torchscript: bool = False
    feature_input_size: int = 224
    batch_size: int = 32
    device: str | None = None
    kid_subsets: int = 100
    kid_subset_size: int = 1000
    pr_k: int = 3
    is_splits: int = 10
    patch_fid_crops: int = 0  # 0 = no Patch-FID
    patch_max_scale: float = 8.0
    ct_cells: int = 5
    seams: bool = True
    seam_periods: tuple[int, ...] = (128,)
    seam_edge_distance: int = DEFAULT_EDGE_DISTANCE  # px around the layout's class borders left out of the seam score
    adherence: bool = True
    class_map: dict[str, str] | None = None  # model class -> heuristic class; None = glass vs tissue
    segmenter: str = "he"


@dataclass
class EvaluationResult:
    """The metrics (JSON-ready) and the tiles shown in the report."""

    metrics: dict
    real_tiles: list[np.ndarray] = field(repr=False)
    synthetic_tiles: list[np.ndarray] = field(repr=False)


class _Stages:
    """Reports stage progress and checks for cancellation between batches."""

    def __init__(self, progress: ProgressCallback | None, cancel: CancelToken | None) -> None:
        self.progress, self.cancel = progress, cancel

    def __call__(self, stage: str, done: int, total: int, message: str = "") -> None:
        if self.cancel is not None:
            self.cancel.raise_if_cancelled()
        if self.progress is not None:
            self.progress(ProgressEvent(stage, done, total, message))


def _features_of(
    extractor: FeatureExtractor, tiles, total: int, name: str, settings: EvaluationSettings, stages: _Stages
) -> tuple[np.ndarray, np.ndarray | None]:
    stages("features", 0, total, name)
    return extract_features(
        extractor, tiles, batch_size=settings.batch_size, progress=lambda n: stages("features", n, total, name)
    )


def _quality(
    real: np.ndarray, fake: np.ndarray, fake_logits, real_logits, settings: EvaluationSettings, device: str
) -> dict:
    kid_mean, kid_std = kernel_distance(
        real, fake, subsets=settings.kid_subsets, subset_size=settings.kid_subset_size, seed=settings.seed
    )
    precision, recall = precision_recall(real, fake, k=settings.pr_k, device=device)
    out = {
        "fid": fid_from_features(real, fake),
        "kid_mean": kid_mean,
        "kid_std": kid_std,
        "precision": precision,
        "recall": recall,
    }
    if fake_logits is not None and len(fake_logits) >= settings.is_splits:
        out["is_mean"], out["is_std"] = inception_score(fake_logits, splits=settings.is_splits)
        out["is_real_mean"], out["is_real_std"] = inception_score(real_logits, splits=settings.is_splits)
    return out


def _store_checks(sample: TileSample, settings: EvaluationSettings, stages: _Stages) -> dict:
    """Seams and layout adherence of each synthetic slide store."""
    from .adherence import load_segmenter, named_mapping, store_adherence, tissue_mapping
    from .seams import seam_score_of_regions

    out: dict = {}
    stores = [s for s in sample.sources if isinstance(s, SlideSource) and s.kind == "store"]
    for i, source in enumerate(stores):
        entry: dict = {}
        store = source.slide
        if settings.seams:
            h, w = store.shape
            try:
                labels = store.label_level(0)
            except DiffInfiniteError:
                labels = None
            try:
                # the class borders the layout asks for are drawn on purpose: not seams
                scores = seam_score_of_regions(
                    lambda y0, y1, x0, x1, st=store: st.read_region(0, y0, y1, x0, x1),
                    (h, w),
                    settings.seam_periods,
                    progress=lambda d, t, name=source.name: stages("seams", d, t, name),
                    read_labels=None
                    if labels is None
                    else (lambda y0, y1, x0, x1, lab=labels: np.asarray(lab[y0:y1, x0:x1])),
                    edge_distance=settings.seam_edge_distance,
                )
                entry["seams"] = {str(p): s.to_dict() for p, s in scores.items()}
                if labels is not None:
                    entry["seams_exclude_class_borders_px"] = settings.seam_edge_distance
            except DiffInfiniteError as exc:  # e.g. a slide smaller than two periods
                entry["seams"] = {"error": str(exc)}
        if settings.adherence:
            try:
                store.label_level(0)
            except DiffInfiniteError:
                entry["adherence"] = {"error": "the store has no label layout"}
            else:
                mapping = (
                    named_mapping(store.class_names, settings.class_map)
                    if settings.class_map
                    else tissue_mapping(store.class_names)
                )
                segmenter = load_segmenter(settings.segmenter)
                result, level = store_adherence(store, mapping, segmenter)
                entry["adherence"] = {
                    **result.to_dict(),
                    "level": level,
                    "mapping": mapping.to_dict(),
                    # the rule's parameters, so that a report says which version of the heuristic scored it
                    "segmenter": {"name": settings.segmenter, **(asdict(segmenter) if is_dataclass(segmenter) else {})},
                }
        stages("stores", i + 1, len(stores), source.name)
        out[str(source.path)] = entry
    return out


def compare_pixel_size(setting: str | float, sources) -> float | None:
    """The pixel size (um/px) to compare ``sources`` at, or None to read every slide as it is.

    ``"native"``: None. ``"auto"``: the coarsest pixel size among the slides that state one,
    when they differ by more than ``PIXEL_SIZE_TOLERANCE``. A number: that pixel size.
    """
    if setting == "native":
        return None
    if setting != "auto":
        try:
            value = float(setting)
        except (TypeError, ValueError):
            value = float("nan")
        if not np.isfinite(value) or value <= 0:
            raise EvaluationError(
                f"--pixel-size must be 'auto', 'native' or microns per pixel (a number > 0), not {setting!r}"
            )
        return value
    known = [s.pixel_size_um for s in sources if isinstance(s, SlideSource) and s.pixel_size_um is not None]
    if not known or max(known) <= min(known) * (1 + PIXEL_SIZE_TOLERANCE):
        return None
    return max(known)


def evaluate(
    real: Paths,
    synthetic: Paths,
    *,
    training: Paths = (),
    held_out: Paths = (),
    settings: EvaluationSettings | None = None,
    extractor: FeatureExtractor | None = None,
    progress: ProgressCallback | None = None,
    cancel: CancelToken | None = None,
) -> EvaluationResult:
    """Evaluate the synthetic sources against the real ones (see the module docstring).

    ``extractor`` overrides ``settings.features`` (e.g. a model already loaded).
    """
    settings = settings or EvaluationSettings()
    stages = _Stages(progress, cancel)
    started = time.time()
    metrics: dict = {"software": f"napari-diffinfinite {__version__}", "settings": asdict(settings)}

    sets = {"real": real, "synthetic": synthetic, "training": training, "held_out": held_out}
    opened: dict[str, list] = {}
    samples: dict[str, TileSample] = {}

    def draw(sources: list, name: str) -> TileSample:
        stages("sample", 0, 1, name)
        return sample_tiles(
            sources,
            settings.tiles,
            size=settings.tile_size,
            level=settings.level,
            seed=settings.seed,
            include_glass=settings.include_glass,
            min_tissue=settings.min_tissue,
            progress=lambda d, t: stages("sample", d, t, name),
        )

    try:
        for key, paths in sets.items():
            opened[key] = []
            for path in paths:
                opened[key].append(open_source(path))
        everything = [source for sources in opened.values() for source in sources]
        target = compare_pixel_size(settings.pixel_size, everything)
        metrics["pixel_size"] = {
            "setting": settings.pixel_size,
            "compared_at_um": target,
            "slides_um": {str(s.path): s.pixel_size_um for s in everything if isinstance(s, SlideSource)},
        }
        notes: dict[str, list[str]] = {}
        if target is not None:
            for key in opened:
                opened[key], notes[key] = match_pixel_size(opened[key], target)
        for key, sources in opened.items():
            if sources:
                samples[key] = draw(sources, key.replace("_", "-"))
                samples[key].notes.extend(notes.get(key, []))
        metrics["tiles"] = {k: s.describe() for k, s in samples.items()}

        stages("load", 0, 1, "feature extractor")
        if extractor is None:
            extractor = load_feature_extractor(
                settings.features,
                inception_weights=settings.inception_weights,
                trust_torchscript=settings.trust_torchscript,
                input_size=settings.feature_input_size,
                device=settings.device,
            )
        device = str(next(iter(extractor.parameters())).device)
        metrics["features"] = {**extractor.describe(), "device": device}

        feats, logits = {}, {}
        for key, sample in samples.items():
            feats[key], logits[key] = _features_of(extractor, iter(sample), len(sample), key, settings, stages)
        metrics["quality"] = _quality(
            feats["real"], feats["synthetic"], logits["synthetic"], logits["real"], settings, device
        )

        if settings.patch_fid_crops:
            from .patches import crop_specs, matched_crops

            specs = crop_specs(settings.patch_fid_crops, settings.tile_size, settings.patch_max_scale, settings.seed)
            n = len(specs)
            patch = {}
            for key in ("real", "synthetic"):
                patch[key], _ = _features_of(
                    extractor, matched_crops(samples[key].sources, specs, settings.tile_size), n, f"{key} crops",
                    settings, stages,
                )  # fmt: skip
            metrics["patch_fid"] = {
                "patch_fid": fid_from_features(patch["real"], patch["synthetic"]),
                "crops": n,
                "max_scale": settings.patch_max_scale,
            }

        if "training" in feats:
            from .privacy import authenticity, ct_score

            privacy = authenticity(feats["training"], feats["synthetic"], device=device).to_dict()
            if "held_out" in feats:
                privacy.update(
                    ct_score(
                        feats["training"], feats["held_out"], feats["synthetic"],
                        cells=settings.ct_cells, seed=settings.seed, device=device,
                    ).to_dict()
                )  # fmt: skip
            metrics["privacy"] = privacy

        metrics["slides"] = _store_checks(samples["synthetic"], settings, stages)
        metrics["seconds"] = round(time.time() - started, 2)
        shown = min(16, len(samples["real"]), len(samples["synthetic"]))
        rng = np.random.default_rng(settings.seed)
        real_show = [
            samples["real"].read(samples["real"].refs[i]) for i in sorted(rng.permutation(len(samples["real"]))[:shown])
        ]
        fake_show = [
            samples["synthetic"].read(samples["synthetic"].refs[i])
            for i in sorted(rng.permutation(len(samples["synthetic"]))[:shown])
        ]
        return EvaluationResult(metrics=metrics, real_tiles=real_show, synthetic_tiles=fake_show)
    finally:
        adopted = {id(source) for sample in samples.values() for source in sample.sources}
        for sample in samples.values():
            sample.close()
        for sources in opened.values():  # opened but not yet sampled when an error stopped the evaluation
            for source in sources:
                if id(source) not in adopted:
                    source.close()
