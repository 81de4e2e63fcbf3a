import numpy as np
import pytest

from napari_diffinfinite.sampling.grid import count_patches, ideal_patches, step_grid, step_patches
from napari_diffinfinite.sampling.noise import grid_offset
from napari_diffinfinite.sampling.sampler import patches_per_run


@pytest.mark.parametrize("shape", [(64, 64), (65, 200), (128, 128), (191, 77), (512, 512)])
@pytest.mark.parametrize("offset", [(0, 0), (1, 63), (32, 17), (63, 1)])
def test_every_pixel_has_exactly_one_owner(shape, offset):
    patch = 64
    owners = np.zeros(shape, int)
    for p in step_patches(shape, patch, offset):
        assert 0 <= p.y <= shape[0] - patch and 0 <= p.x <= shape[1] - patch
        assert p.y <= p.own_y0 < p.own_y1 <= p.y + patch and p.x <= p.own_x0 < p.own_x1 <= p.x + patch
        owners[p.own_y0 : p.own_y1, p.own_x0 : p.own_x1] += 1
    assert (owners == 1).all()


def test_patch_count_is_within_border_term():
    shape, patch = (512, 512), 64
    counts = [len(step_patches(shape, patch, grid_offset(7, k, patch))) for k in range(250)]
    assert max(counts) <= (512 // 64 + 1) ** 2
    assert np.mean(counts) / ideal_patches(shape, patch) <= 1.3


def test_single_patch_canvas_needs_one_evaluation():
    assert len(step_patches((64, 64), 64, (10, 40))) == 1


def test_offsets_move_between_steps_and_are_seeded():
    offsets = {grid_offset(3, k, 64) for k in range(20)}
    assert len(offsets) > 10
    assert grid_offset(3, 5, 64) == grid_offset(3, 5, 64) != grid_offset(4, 5, 64)


def test_canvas_smaller_than_patch_is_refused():
    with pytest.raises(ValueError, match="smaller than the patch"):
        step_patches((32, 100), 64, (0, 0))


@pytest.mark.parametrize("context", [0, 1, 2])
@pytest.mark.parametrize("side", [32, 33, 63, 100, 301])
def test_count_patches_is_the_grid_length_without_the_grid(side, context):
    for offset in range(0, 32 - 2 * context, 3):
        shape = (side, 2 * side + 5)
        assert count_patches(shape, 32, (offset, offset + 1), context) == len(
            step_grid(shape, 32, (offset, offset + 1), context)
        )


def test_patch_estimate_for_a_huge_slide_needs_no_grid():
    # 10,000,000 px square at 4x4 unshuffle: the grid would hold 6e10 patches (178 GiB of
    # indices; the napari estimate used to build it on every change of Steps)
    assert patches_per_run((2_500_000, 2_500_000), 32, 8) > 8 * (2_500_000 // 32) ** 2
