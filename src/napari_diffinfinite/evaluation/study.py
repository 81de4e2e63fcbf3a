"""Blinded reader study: can a reader tell real tiles from synthetic ones?

The study logic, without Qt (the napari dock widget and ``diffinfinite study`` call it):

* :func:`build_study` draws tiles from real and synthetic sources (reproducibly, with the
  same sampler as the metrics), shuffles them together and writes a *study folder*:
  ``tiles/0001.png`` ... (numbered in showing order; no source, slide name or position in
  the file or its metadata), ``key.csv`` (tile -> source and origin; the widget never
  shows it, and an organiser may move it away until scoring) and ``study.json``.
* :class:`ReaderSession` shows one tile after the other to one reader and appends each
  answer to the reader's CSV the moment it is given (``reader, tile, answer, realism,
  time``; flushed and fsynced), so a session interrupted at any point resumes at the first
  unanswered tile.
* :func:`score_answers` joins answers with the key: accuracy with its exact binomial
  confidence interval (Clopper-Pearson, ``scipy.stats.binomtest(...).proportion_ci``), the
  p-value against guessing (50 %), the per-source confusion table, and the mean realism
  score per source. Accuracy near 50 % means the reader could not tell them apart.
"""

from __future__ import annotations

import csv
import json
import os
import re
import shutil
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from .distances import EvaluationError
from .tiles import sample_tiles

__all__ = [
    "ANSWERS",
    "StudyTile",
    "Study",
    "build_study",
    "load_study",
    "ReaderSession",
    "StudyScore",
    "score_answers",
]

ANSWERS = ("real", "synthetic")
KEY_NAME, META_NAME, TILE_DIR = "key.csv", "study.json", "tiles"
ANSWER_FIELDS = ("reader", "tile", "answer", "realism", "time")
_CORNER = "truth \\ answer"


@dataclass(frozen=True)
class StudyTile:
    """One tile of a study: its anonymous id (file stem) and image file."""

    id: str
    path: Path

    def image(self) -> np.ndarray:
        with Image.open(self.path) as img:
            return np.asarray(img.convert("RGB"))


@dataclass
class Study:
    """A study folder: tiles in showing order, and the key when it is present."""

    folder: Path
    tiles: list[StudyTile]
    key: dict[str, str] = field(default_factory=dict)  # tile id -> "real" | "synthetic"

    def __len__(self) -> int:
        return len(self.tiles)


def build_study(
    real: Sequence[str | os.PathLike],
    synthetic: Sequence[str | os.PathLike],
    folder: str | os.PathLike,
    *,
    tiles_per_source: int = 20,
    size: int = 256,
    level: int = 0,
    seed: int = 0,
    include_glass: bool = False,
    overwrite: bool = False,
) -> Study:
    """Sample, shuffle and write a study folder (see the module docstring); returns it loaded.

    The folder is written under a temporary name and renamed at the end: a failed export
    leaves nothing behind.
    """
    folder = Path(folder)
    if folder.exists():
        if not overwrite:
            raise EvaluationError(f"{folder} exists; choose another study folder or pass --overwrite")
        if folder.is_symlink() or not (folder / META_NAME).is_file():
            raise EvaluationError(f"{folder} exists and is not a study folder; choose another folder")
        from ..slide.ownership import unexpected_entries

        extra = unexpected_entries(folder, {META_NAME, KEY_NAME}, {TILE_DIR: re.compile(r"^\d+\.png$")})
        if extra:  # readers' answers are often saved in the study folder: never delete them
            raise EvaluationError(
                f"refusing to overwrite {folder}: it holds files this tool did not write ({', '.join(extra[:5])}), "
                "e.g. readers' answers; move them out or choose another study folder"
            )
    entries: list[tuple[str, str, np.ndarray]] = []  # (source kind, origin, pixels)
    for kind, paths in (("real", real), ("synthetic", synthetic)):
        sample = sample_tiles(paths, tiles_per_source, size=size, level=level, seed=seed, include_glass=include_glass)
        try:
            for ref in sample.refs:
                origin = f"{sample.sources[ref.source].path}|{json.dumps(ref.to_dict(), sort_keys=True)}"
                entries.append((kind, origin, sample.read(ref)))
        finally:
            sample.close()
    order = np.random.default_rng([seed, 0x57D1]).permutation(len(entries))
    width = max(4, len(str(len(entries))))
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.tmp-", dir=folder.parent))
    try:
        (tmp / TILE_DIR).mkdir()
        with open(tmp / KEY_NAME, "w", newline="") as fh:
            writer = csv.writer(fh)
            writer.writerow(["tile", "source", "origin"])
            for rank, index in enumerate(order, start=1):
                kind, origin, pixels = entries[index]
                tile_id = f"{rank:0{width}d}"
                Image.fromarray(pixels).save(tmp / TILE_DIR / f"{tile_id}.png")  # no text chunks: nothing to give away
                writer.writerow([tile_id, kind, origin])
        meta = {
            "tiles": len(entries),
            "tiles_per_source": tiles_per_source,
            "tile_size": size,
            "level": level,
            "seed": seed,
            "include_glass": include_glass,
            "real": [str(p) for p in real],
            "synthetic": [str(p) for p in synthetic],
        }
        (tmp / META_NAME).write_text(json.dumps(meta, indent=2))
        if folder.exists():
            shutil.rmtree(folder)
        os.replace(tmp, folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return load_study(folder)


def _read_key(path: Path) -> dict[str, str]:
    with open(path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    key = {row["tile"]: row["source"] for row in rows}
    bad = sorted({v for v in key.values() if v not in ANSWERS})
    if bad:
        raise EvaluationError(f"{path} lists sources {bad}; only {ANSWERS} are allowed")
    return key


def load_study(folder: str | os.PathLike, key: str | os.PathLike | None = None) -> Study:
    """A study folder; ``key`` overrides where its key CSV is (when the organiser moved it)."""
    folder = Path(folder)
    tile_dir = folder / TILE_DIR
    if not tile_dir.is_dir():
        raise EvaluationError(
            f"{folder} is not a study folder (no {TILE_DIR}/); make one with 'diffinfinite study export'"
        )
    tiles = [StudyTile(p.stem, p) for p in sorted(tile_dir.glob("*.png"))]
    if not tiles:
        raise EvaluationError(f"{tile_dir} holds no tiles")
    key_path = Path(key) if key else folder / KEY_NAME
    return Study(folder=folder, tiles=tiles, key=_read_key(key_path) if key_path.is_file() else {})


def _read_answers(path: Path) -> list[dict[str, str]]:
    if not path.is_file():
        return []
    with open(path, newline="") as fh:
        reader = csv.DictReader(fh)
        if reader.fieldnames and tuple(reader.fieldnames) != ANSWER_FIELDS:
            raise EvaluationError(
                f"{path} is not an answers file (columns {reader.fieldnames}, expected {ANSWER_FIELDS})"
            )
        return list(reader)


class ReaderSession:
    """One reader going through a study; answers appended to ``answers`` (CSV) as they are given."""

    def __init__(self, study: Study, answers: str | os.PathLike, reader: str) -> None:
        if not reader.strip():
            raise EvaluationError("give the reader's name or initials, so answers can be told apart")
        self.study = study
        self.answers_path = Path(answers)
        self.reader = reader.strip()
        ids = {t.id for t in study.tiles}
        self.answered: dict[str, str] = {}
        for row in _read_answers(self.answers_path):
            if row["reader"] == self.reader and row["tile"] in ids:
                self.answered[row["tile"]] = row["answer"]

    @property
    def done(self) -> int:
        return len(self.answered)

    @property
    def total(self) -> int:
        return len(self.study.tiles)

    @property
    def finished(self) -> bool:
        return self.done >= self.total

    def current(self) -> StudyTile | None:
        """The first tile (in study order) this reader has not answered, or None when all are."""
        return next((t for t in self.study.tiles if t.id not in self.answered), None)

    def answer(self, answer: str, realism: int | None = None) -> StudyTile | None:
        """Record the answer for the current tile (written at once); returns the next tile."""
        tile = self.current()
        if tile is None:
            raise EvaluationError("the study is finished: every tile has an answer")
        if answer not in ANSWERS:
            raise EvaluationError(f"answer {answer!r}: choose one of {ANSWERS}")
        if realism is not None and not 1 <= int(realism) <= 5:
            raise EvaluationError(f"realism {realism}: give a score from 1 (clearly artificial) to 5 (fully realistic)")
        new = not self.answers_path.exists() or self.answers_path.stat().st_size == 0
        self.answers_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.answers_path, "a", newline="") as fh:
            writer = csv.writer(fh)
            if new:
                writer.writerow(ANSWER_FIELDS)
            stamp = time.strftime("%Y-%m-%dT%H:%M:%S%z")
            writer.writerow([self.reader, tile.id, answer, "" if realism is None else int(realism), stamp])
            fh.flush()
            os.fsync(fh.fileno())
        self.answered[tile.id] = answer
        return self.current()

    def score(self) -> StudyScore:
        return score_answers(self.study, self.answers_path, reader=self.reader)


@dataclass(frozen=True)
class StudyScore:
    answered: int
    correct: int
    accuracy: float
    ci_low: float
    ci_high: float
    p_value: float  # two-sided, against 50 % (guessing)
    confusion: dict[str, dict[str, int]]  # true source -> answer -> count
    mean_realism: dict[str, float | None]
    readers: dict[str, float]  # accuracy per reader

    def to_dict(self) -> dict:
        return dict(self.__dict__)

    def lines(self) -> list[str]:
        out = [
            f"answered {self.answered}, correct {self.correct}: accuracy {self.accuracy:.1%} "
            f"(95% CI {self.ci_low:.1%} to {self.ci_high:.1%}; p = {self.p_value:.3g} against guessing)",
            f"{_CORNER:>16} {'real':>6} {'synthetic':>10}",
        ]
        for truth in ANSWERS:
            row = self.confusion[truth]
            out.append(f"{truth:>16} {row['real']:>6} {row['synthetic']:>10}")
        realism = ", ".join(f"{k} {v:.2f}" for k, v in self.mean_realism.items() if v is not None)
        if realism:
            out.append(f"mean realism (1-5): {realism}")
        return out


def score_answers(
    study: Study, answers: str | os.PathLike, *, reader: str | None = None, confidence: float = 0.95
) -> StudyScore:
    """Accuracy, binomial CI and confusion table of the answers (of one ``reader``, or all)."""
    from scipy.stats import binomtest

    if not study.key:
        raise EvaluationError(f"the study's key ({study.folder / KEY_NAME}) is missing; pass its path to score")
    rows = [r for r in _read_answers(Path(answers)) if reader is None or r["reader"] == reader]
    latest: dict[tuple[str, str], dict[str, str]] = {}
    for row in rows:
        if row["tile"] in study.key:
            latest[(row["reader"], row["tile"])] = row
    if not latest:
        raise EvaluationError(f"{answers} holds no answers for this study" + (f" by {reader!r}" if reader else ""))
    confusion = {t: {a: 0 for a in ANSWERS} for t in ANSWERS}
    realism: dict[str, list[int]] = {t: [] for t in ANSWERS}
    per_reader: dict[str, list[bool]] = {}
    for (who, tile), row in latest.items():
        truth = study.key[tile]
        if row["answer"] not in ANSWERS:
            raise EvaluationError(f"{answers}: answer {row['answer']!r} for tile {tile} is not one of {ANSWERS}")
        confusion[truth][row["answer"]] += 1
        if row.get("realism"):
            realism[truth].append(int(row["realism"]))
        per_reader.setdefault(who, []).append(row["answer"] == truth)
    n = len(latest)
    correct = sum(confusion[t][t] for t in ANSWERS)
    test = binomtest(correct, n, 0.5)
    ci = test.proportion_ci(confidence_level=confidence, method="exact")
    return StudyScore(
        answered=n,
        correct=correct,
        accuracy=correct / n,
        ci_low=float(ci.low),
        ci_high=float(ci.high),
        p_value=float(test.pvalue),
        confusion=confusion,
        mean_realism={t: (float(np.mean(v)) if v else None) for t, v in realism.items()},
        readers={who: float(np.mean(ok)) for who, ok in per_reader.items()},
    )
