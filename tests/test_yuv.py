"""edgequant.functional.yuv: BT.601 RGB <-> centered YUV444 against a NumPy reference."""
import numpy as np
import pytest
import torch

from edgequant.functional import bgr2centered_yuv, centered_yuv2bgr, centered_yuv2rgb, rgb2centered_yuv


def grid(n=32):
    """Every colour of an n^3 grid spanning 0..255, as one NCHW image (1, 3, n*n, n)."""
    levels = np.round(np.linspace(0, 255, n))
    r, g, b = np.meshgrid(levels, levels, levels, indexing="ij")
    return torch.tensor(np.stack([r, g, b]).reshape(1, 3, n * n, n), dtype=torch.float32)


def numpy_bt601(rgb: np.ndarray, swing: str) -> np.ndarray:
    """Textbook BT.601 (JFIF full swing; studio with the 219/224 coefficients), centered, rounded."""
    r, g, b = rgb.astype(np.float64)
    if swing == "full":
        y = 0.299 * r + 0.587 * g + 0.114 * b
        u = 128 - 0.168736 * r - 0.331264 * g + 0.5 * b
        v = 128 + 0.5 * r - 0.418688 * g - 0.081312 * b
    else:
        y = 16 + (65.481 * r + 128.553 * g + 24.966 * b) / 255
        u = 128 + (-37.797 * r - 74.203 * g + 112.0 * b) / 255
        v = 128 + (112.0 * r - 93.786 * g - 18.214 * b) / 255
    return np.clip(np.round(np.stack([y, u, v])) - 128, -128, 127)


@pytest.mark.parametrize("swing", ["full", "studio"])
def test_matches_numpy_reference(swing):
    x = grid()
    ours = rgb2centered_yuv(x, swing)[0].numpy()
    ref = numpy_bt601(x[0].numpy(), swing)
    diff = np.abs(ours - ref)
    assert diff.max() <= 1                      # the reference's coefficients are rounded to 1e-6
    assert (diff == 0).mean() > 0.999
    assert ours.min() >= -128 and ours.max() <= 127 and np.all(ours == np.round(ours))
    if swing == "studio":
        assert ours[0].min() == 16 - 128 and ours[0].max() == 235 - 128
        assert ours[1:].min() == 16 - 128 and ours[1:].max() == 240 - 128


@pytest.mark.parametrize("swing,tol", [("full", 1), ("studio", 2)])
def test_round_trip_every_grid_colour(swing, tol):
    x = grid()
    back = centered_yuv2rgb(rgb2centered_yuv(x, swing), swing, mean=128, std=1, q_scale=1)
    err = (back - (x - 128)).abs()
    assert err.max() <= tol, float(err.max())
    assert torch.equal(back, torch.round(back))


def test_bgr_and_normalisation():
    x = grid(8)
    bgr = x.flip(1)
    assert torch.equal(bgr2centered_yuv(bgr), rgb2centered_yuv(x))
    mean, std, s = [120.0, 110.0, 100.0], torch.tensor([60.0, 50.0, 40.0]), 0.03
    yuv = rgb2centered_yuv(x)
    a = centered_yuv2rgb(yuv, mean=mean, std=std, q_scale=s)
    b = centered_yuv2bgr(yuv, mean=mean[::-1], std=std.flip(0), q_scale=s)
    assert torch.equal(a, b.flip(1))
    rgb = centered_yuv2rgb(yuv)  + 128                      # the 8-bit RGB image
    want = torch.round((rgb - torch.tensor(mean).reshape(3, 1, 1)) / std.reshape(3, 1, 1) / s).clamp(-128, 127)
    assert (a - want).abs().max() <= 1
    with pytest.raises(ValueError):
        rgb2centered_yuv(x, swing="bt709")
