"""Randomness keyed by (seed, step, position), generated on any device.

Every random number the sampler draws is a pure function of the seed, the sampling step
and where it lands on the canvas, so a slide depends on neither the batch size, nor the
device, nor where a run was interrupted and resumed.

Gaussian noise comes from a counter-based generator: each canvas position (y, x) is hashed
with the step's key by a 32-bit integer hash (Wellons' "lowbias32" finaliser, in int32
tensor arithmetic that wraps like uint32); the first pair of channels takes that position
hash itself, every further pair one more hash of it with the pair's key, and each 16-bit
half of a pair's word indexes a table of the 65536 quantiles of the standard normal
distribution (a discretised normal, |z| <= 4.33). It is vectorised, runs on the
tensors' own device, and only for the positions asked for (the cells being written); the
numbers are integer arithmetic and a table look-up, so they are the same on every device.
"""

from __future__ import annotations

import numpy as np
import torch

INITIAL_STEP = -1  # the step key of the initial noise x_T

_MASK64 = (1 << 64) - 1
_M32 = 0xFFFFFFFF
_M1, _M2 = 0x7FEB352D, 0x846CA68B  # lowbias32 multipliers
_LEVELS = 1 << 16  # normal quantiles indexed by 16 bits
_BAND = 64  # rows generated at once by normal_field (bounds temporary memory)


def _splitmix64(x: int) -> int:
    x = (x + 0x9E3779B97F4A7C15) & _MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    return x ^ (x >> 31)


def key(*parts: int) -> int:
    """A 63-bit seed mixed from integer parts (order matters)."""
    h = 0
    for part in parts:
        h = _splitmix64(h ^ (int(part) & _MASK64))
    return h >> 1


def generator(*parts: int) -> torch.Generator:
    return torch.Generator().manual_seed(key(*parts))


def grid_offset(seed: int, step: int, patch: int) -> tuple[int, int]:
    """The random offset (dy, dx) in [0, patch) of the patch grid at ``step``."""
    oy, ox = torch.randint(0, patch, (2,), generator=generator(seed, 0x6772_6964, step)).tolist()
    return oy, ox


def _signed(value: int) -> int:
    """A 32-bit word as the int32 with the same bits."""
    value &= _M32
    return value - (1 << 32) if value >= 1 << 31 else value


_CONSTANTS: dict[torch.device, dict[int, torch.Tensor]] = {}


def _constant(value: int, device: torch.device) -> torch.Tensor:
    """A cached 0-d int32 tensor (a Python scalar would be converted on every operation)."""
    table = _CONSTANTS.setdefault(device, {})
    if value not in table:
        table[value] = torch.tensor(_signed(value), dtype=torch.int32, device=device)
    return table[value]


def hash32(v: torch.Tensor, scratch: torch.Tensor | None = None) -> torch.Tensor:
    """Wellons' lowbias32 integer hash, elementwise and in place on an int32 tensor (bits as uint32).

    int32 multiplication wraps modulo 2**32 on CPU and CUDA, so this is uint32 arithmetic;
    right shifts are made logical by masking off the copied sign bits. In-place operations
    on one scratch buffer: fresh allocations would cost more than the arithmetic on a CPU.
    (An int16 view that XORs the high half into the low half, in place of the 16-bit
    shifts, was measured slower on a CPU: strided int16 operations are not vectorised.)
    """
    t = torch.empty_like(v) if scratch is None else scratch
    d = v.device
    for shift, multiplier in ((16, _M1), (15, _M2), (16, None)):
        torch.bitwise_right_shift(v, _constant(shift, d), out=t)
        v.bitwise_xor_(t.bitwise_and_(_constant((1 << (32 - shift)) - 1, d)))
        if multiplier is not None:
            v.mul_(_constant(multiplier, d))
    return v


def hash32_reference(v: np.ndarray) -> np.ndarray:
    """The same hash in numpy uint32 arithmetic (wrapping), for tests."""
    v = v.astype(np.uint32)
    with np.errstate(over="ignore"):
        v ^= v >> np.uint32(16)
        v *= np.uint32(_M1)
        v ^= v >> np.uint32(15)
        v *= np.uint32(_M2)
        v ^= v >> np.uint32(16)
    return v


def step_keys(seed: int, step: int, channels: int) -> tuple[int, int, list[int]]:
    """32-bit keys of a step: one for rows, one for columns, one per pair of channels after the first.

    The first pair's word is the position hash itself (already a hash keyed by the step): one
    hash fewer per pixel, a third of the hashing of a 4-channel latent.
    """
    base = key(seed, 0x6E6F_6973, step)
    words = [key(base, i) & _M32 for i in range(2 + max(0, -(-channels // 2) - 1))]
    return words[0], words[1], words[2:]


def _row_hashes(row_key: int, rows: torch.Tensor) -> torch.Tensor:
    return hash32(rows.int().add_(_signed(row_key)))


def _col_hashes(col_key: int, cols: torch.Tensor) -> torch.Tensor:
    return hash32(cols.int().bitwise_xor_(_signed(col_key))).mul_(0x9E37)  # asymmetric in y and x


def position_hash(seed: int, step: int, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
    """(B, P, Q) int32 hash of the canvas positions rows (B, P) x cols (B, Q) at ``step``."""
    row_key, col_key, _ = step_keys(seed, step, 0)
    return hash32(_row_hashes(row_key, rows)[:, :, None] ^ _col_hashes(col_key, cols)[:, None, :])


_QUANTILES: dict[torch.device, torch.Tensor] = {}


def normal_quantiles(device: torch.device | str = "cpu") -> torch.Tensor:
    """The 65536 quantiles Phi^-1((i + 0.5) / 65536) of the standard normal, float32 (cached)."""
    device = torch.device(device)
    if device not in _QUANTILES:
        levels = (torch.arange(_LEVELS, dtype=torch.float64) + 0.5) / _LEVELS
        _QUANTILES[device] = torch.special.ndtri(levels).float().to(device)
    return _QUANTILES[device]


class StepNoise:
    """The keyed normals of one sampling step, drawn batch by batch (see :func:`normal_at`).

    The per-row and per-column hashes of a canvas are computed once per step (its rows are
    latent rows ``row_offset`` to ``row_offset + height``, its columns latent columns
    ``col_offset`` to ``col_offset + width``); a batch then costs two small look-ups and the
    per-pixel hashing.
    """

    def __init__(
        self, seed: int, step: int, channels: int, height: int, width: int, *, row_offset: int = 0,
        col_offset: int = 0, device: torch.device | str = "cpu",
    ) -> None:  # fmt: skip
        self.channels = channels
        self.device = torch.device(device)
        row_key, col_key, words = step_keys(seed, step, channels)
        self.words = [_constant(word, self.device) for word in words]
        self.row_hash = _row_hashes(row_key, torch.arange(row_offset, row_offset + height, device=self.device))
        self.col_hash = _col_hashes(col_key, torch.arange(col_offset, col_offset + width, device=self.device))

    def at(self, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
        """(B, channels, P, Q) standard normals at canvas rows (B, P) x cols (B, Q), batch-major."""
        d = self.device
        hy, hx = self.row_hash[rows], self.col_hash[cols]
        batch, size = len(rows), (rows.shape[1], cols.shape[1])
        pairs = 1 + len(self.words)
        bits = torch.empty(batch, pairs, *size, dtype=torch.int32, device=d)  # a word per channel pair
        h = bits[:, 0]  # pair 0: the (B, P, Q) position hash itself
        torch.bitwise_xor(hy[:, :, None], hx[:, None, :], out=h)
        hash32(h)
        for i, word in enumerate(self.words, start=1):
            torch.bitwise_xor(h, word, out=bits[:, i])
        if pairs > 1:
            hash32(bits[:, 1:])
        # channel 2j from the low half of word j, 2j + 1 from the high half: written straight into
        # the (B, pairs, 2, P, Q) index, so no stack copy follows; int64, because a CPU's
        # index_select takes about 1.5x longer per element with an int32 index
        index = torch.empty(batch, pairs, 2, *size, dtype=torch.int64, device=d)
        torch.bitwise_and(bits, _constant(0xFFFF, d), out=index[:, :, 0])
        torch.bitwise_right_shift(bits, _constant(16, d), out=index[:, :, 1]).bitwise_and_(_constant(0xFFFF, d))
        normals = normal_quantiles(d).index_select(0, index.view(-1)).view(batch, 2 * pairs, *size)
        return normals[:, : self.channels]


def normal_at(seed: int, step: int, channels: int, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
    """Standard normals at canvas positions rows (B, P) x cols (B, Q): a (channels, B, P, Q) tensor.

    On the device of ``rows``; the value at (c, y, x) depends only on (seed, step, y, x, c),
    so it is the same for any batch, device or canvas window (:class:`StepNoise` draws the
    same numbers batch by batch, batch-major).
    """
    y0, x0 = int(rows.min()), int(cols.min())
    height, width = int(rows.max()) - y0 + 1, int(cols.max()) - x0 + 1
    noise = StepNoise(seed, step, channels, height, width, row_offset=y0, col_offset=x0, device=rows.device)
    return noise.at(rows - y0, cols - x0).transpose(0, 1)


def normal_field(
    seed: int, step: int, channels: int, y0: int, y1: int, x0: int, x1: int, device: str | torch.device = "cpu"
) -> torch.Tensor:
    """Standard normal noise of shape (channels, y1-y0, x1-x0) for canvas rows y0:y1, cols x0:x1."""
    out = torch.empty(channels, y1 - y0, x1 - x0, device=device)
    cols = torch.arange(x0, x1, device=device)[None]
    for start in range(y0, y1, _BAND):
        rows = torch.arange(start, min(start + _BAND, y1), device=device)[None]
        out[:, start - y0 : start - y0 + rows.shape[1]] = normal_at(seed, step, channels, rows, cols)[:, 0]
    return out


def numpy_rng(*parts: int) -> np.random.Generator:
    return np.random.default_rng(key(*parts))
