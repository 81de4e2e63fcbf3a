import numpy as np
import torch
from scipy.special import ndtri

from napari_diffinfinite.sampling.noise import (
    hash32,
    hash32_reference,
    normal_at,
    normal_field,
    normal_quantiles,
    position_hash,
    step_keys,
)


def test_int32_hash_equals_uint32_reference():
    values = np.random.default_rng(0).integers(0, 2**32, 50_000, dtype=np.uint64).astype(np.uint32)
    got = hash32(torch.from_numpy(values.view(np.int32)).clone()).numpy().view(np.uint32)
    assert np.array_equal(got, hash32_reference(values))


def _reference_normals(seed, step, channels, rows, cols):
    """The generator written out in numpy uint32 arithmetic with a float64 quantile table."""
    row_key, col_key, words = step_keys(seed, step, channels)
    hy = hash32_reference((rows.astype(np.uint64) + row_key).astype(np.uint32))
    hx = hash32_reference((cols.astype(np.uint64) ^ col_key).astype(np.uint32))
    with np.errstate(over="ignore"):
        hx = hx * np.uint32(0x9E37)
    h = hash32_reference(hy[:, None] ^ hx[None, :])
    table = ndtri((np.arange(65536) + 0.5) / 65536)
    out = []
    for bits in [h] + [hash32_reference(h ^ np.uint32(w)) for w in words]:  # pair 0: the position hash
        out += [table[bits & 0xFFFF], table[bits >> 16]]
    return np.stack(out)[:channels]


def test_normals_equal_the_device_free_reference():
    rows, cols = np.arange(100, 140), np.arange(7, 60)
    got = normal_at(3, 17, 5, torch.from_numpy(rows)[None], torch.from_numpy(cols)[None])[:, 0].numpy()
    expected = _reference_normals(3, 17, 5, rows, cols)
    assert got.shape == (5, 40, 53)
    assert np.array_equal(got, expected.astype(np.float32))


def test_quantile_table_is_a_discretised_standard_normal():
    table = normal_quantiles().double()
    assert len(table) == 65536 and torch.all(table[1:] > table[:-1])
    assert abs(table.mean()) < 1e-6 and abs(table.std() - 1) < 1e-3 and 4.3 < table.max() < 4.4


def test_noise_depends_only_on_position():
    whole = normal_field(5, 2, 4, 0, 96, 0, 80)
    assert torch.equal(normal_field(5, 2, 4, 30, 70, 11, 64), whole[:, 30:70, 11:64])
    rows = torch.tensor([[0, 1, 2], [40, 41, 42]])
    cols = torch.tensor([[5, 6], [70, 71]])
    batch = normal_at(5, 2, 4, rows, cols)
    assert torch.equal(batch[:, 1], whole[:, 40:43, 70:72])
    assert torch.equal(batch[:, 0], whole[:, 0:3, 5:7])


def test_noise_is_standard_normal_and_uncorrelated():
    field = normal_field(0, 3, 4, 0, 256, 0, 256).double()
    assert abs(field.mean()) < 0.01 and abs(field.std() - 1) < 0.01
    assert abs((field[:, 1:] * field[:, :-1]).mean()) < 0.01
    assert abs((field[:, :, 1:] * field[:, :, :-1]).mean()) < 0.01
    assert abs((field[0] * field[1]).mean()) < 0.01 and abs((field[0] * field[2]).mean()) < 0.01
    quantiles = torch.quantile(field.flatten()[:200_000], torch.tensor([0.025, 0.5, 0.975], dtype=torch.double))
    assert torch.allclose(quantiles, torch.tensor([-1.96, 0.0, 1.96], dtype=torch.double), atol=0.03)


def test_seed_and_step_change_the_noise():
    a = normal_field(0, 3, 4, 0, 32, 0, 32)
    assert not torch.allclose(a, normal_field(1, 3, 4, 0, 32, 0, 32))
    assert not torch.allclose(a, normal_field(0, 4, 4, 0, 32, 0, 32))


def test_position_hash_has_no_row_column_symmetry():
    h = position_hash(0, 0, torch.arange(64)[None], torch.arange(64)[None])[0]
    assert not torch.equal(h, h.T)
    assert len(torch.unique(h)) == 64 * 64
