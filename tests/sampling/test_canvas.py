import numpy as np
import torch

from napari_diffinfinite.sampling.canvas import LatentCanvas


def _canvas(shape=(37, 53), channels=3):
    latent = torch.randn(channels, *shape)
    labels = np.random.default_rng(0).integers(0, 4, shape).astype(np.uint8)
    return LatentCanvas(latent, labels, torch.device("cpu")), latent, labels


def test_window_gathers_equal_slicing_the_latent():
    canvas, latent, labels = _canvas()
    wy, wx = torch.tensor([0, 5, 21, 0]), torch.tensor([0, 30, 13, 37])
    xs = canvas.gather_windows(wy, wx, 16)
    ls = canvas.gather_label_windows(wy, wx, 16)
    assert xs.shape == (4, 3, 16, 16) and xs.is_contiguous()
    for i, (y, x) in enumerate(zip(wy.tolist(), wx.tolist())):
        assert torch.equal(xs[i], latent[:, y : y + 16, x : x + 16])
        assert np.array_equal(ls[i].numpy(), labels[y : y + 16, x : x + 16])


def test_scatter_writes_owned_pixels_only_into_the_next_buffer():
    canvas, latent, _ = _canvas()
    canvas.next.copy_(canvas.current)
    wy, wx = torch.tensor([3, 20]), torch.tensor([30, 2])
    ar = torch.arange(16)
    rows, cols = wy[:, None] + ar, wx[:, None] + ar
    owned = torch.zeros(2, 16, 16, dtype=torch.bool)
    owned[0, 2:10, 4:] = True
    owned[1] = True
    values = torch.randn(2, 3, 16, 16)
    canvas.scatter(canvas.window_index(rows, cols), owned, values)
    assert torch.equal(canvas.latent(), latent)  # the read buffer is untouched until the swap
    canvas.swap()
    after = canvas.latent()
    expected = latent.clone()
    expected[:, 5:13, 34:46] = values[0][:, 2:10, 4:]
    expected[:, 20:36, 2:18] = values[1]
    assert torch.equal(after, expected)


def test_the_device_path_gathers_and_writes_as_the_host_path(monkeypatch):
    """The indexed gather and cell write (what a GPU runs) equal the CPU's slice copies."""
    canvas, latent, labels = _canvas()
    wy, wx = torch.tensor([0, 5, 21, 0]), torch.tensor([0, 30, 13, 37])
    host = canvas.gather_windows(wy, wx, 16), canvas.gather_label_windows(wy, wx, 16)
    cells = torch.randn(2, 3, 8, 8)
    canvas.write_cells(torch.tensor([1, 20]), torch.tensor([2, 40]), cells)
    host_next = canvas.next.clone()
    monkeypatch.setattr(LatentCanvas, "_host", property(lambda self: False))
    device = canvas.gather_windows(wy, wx, 16), canvas.gather_label_windows(wy, wx, 16)
    assert torch.equal(host[0], device[0]) and torch.equal(host[1], device[1])
    canvas.next.zero_()
    canvas.write_cells(torch.tensor([1, 20]), torch.tensor([2, 40]), cells)
    written = torch.zeros_like(canvas.next, dtype=torch.bool)
    grid = written[:, :-1].view(3, *latent.shape[1:])
    grid[:, 1:9, 2:10] = grid[:, 20:28, 40:48] = True
    assert torch.equal(canvas.next[written], host_next[written])
