import io

import numpy as np
import pytest
from PIL import Image

from curate.decode import _decode_jpeg_fast, decode_rgb, draft_scale, jpeg_frame


def _jpeg(image: Image.Image, **kw) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="JPEG", **kw)
    return buf.getvalue()


def _pil_draft(data: bytes, min_side: int) -> np.ndarray:
    im = Image.open(io.BytesIO(data))
    im.draft("RGB", (min_side, min_side))
    return np.asarray(im.convert("RGB"))


@pytest.fixture(scope="module")
def noise_rgb() -> Image.Image:
    rng = np.random.default_rng(0)
    smooth = np.kron(rng.integers(0, 256, (30, 41, 3), dtype=np.uint8), np.ones((8, 8, 1), np.uint8))
    return Image.fromarray(smooth)  # 328 x 240


@pytest.mark.parametrize("kw", [{}, {"progressive": True}, {"subsampling": 0, "quality": 95}, {"subsampling": 1}])
@pytest.mark.parametrize("min_side", [1, 32, 64, 100, 224, 400])
def test_fast_jpeg_path_gives_pil_draft_pixels(noise_rgb, kw, min_side):
    data = _jpeg(noise_rgb, **kw)
    fast = _decode_jpeg_fast(data, min_side)
    assert fast is not None, "plain JPEGs take the fast path"
    expected = _pil_draft(data, min_side)
    assert fast.shape == expected.shape and np.array_equal(fast, expected)
    assert min(fast.shape[:2]) >= min(min_side, 240)


def test_grayscale_jpeg_decodes_to_three_equal_channels(noise_rgb):
    data = _jpeg(noise_rgb.convert("L"))
    fast = _decode_jpeg_fast(data, 32)
    assert fast is not None and np.array_equal(fast, _pil_draft(data, 32))
    assert np.array_equal(fast[..., 0], fast[..., 2])


def test_exif_orientation_is_ignored_as_pil_ignores_it(noise_rgb):
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees": open_clip's preprocessing does not apply it, so neither do we
    data = _jpeg(noise_rgb, exif=exif.tobytes())
    assert decode_rgb(data, 32).size == _pil_draft_size(data, 32)


def _pil_draft_size(data: bytes, min_side: int) -> tuple[int, int]:
    h, w = _pil_draft(data, min_side).shape[:2]
    return w, h


def test_what_the_fast_path_leaves_to_pil(noise_rgb):
    cmyk = _jpeg(noise_rgb.convert("CMYK"))
    truncated = _jpeg(noise_rgb)[:-200]
    png = io.BytesIO()
    noise_rgb.save(png, format="PNG")
    for data in (cmyk, truncated, png.getvalue(), b"\xff\xd8\xff\xe0 not a jpeg"):
        assert _decode_jpeg_fast(data, 32) is None
    assert decode_rgb(cmyk, 32).mode == "RGB"
    with pytest.raises(OSError):
        decode_rgb(truncated, 32)


def test_frame_header_and_draft_scale(noise_rgb):
    assert jpeg_frame(_jpeg(noise_rgb)) == (328, 240, 3)
    assert jpeg_frame(_jpeg(noise_rgb, progressive=True)) == (328, 240, 3)
    assert jpeg_frame(b"GIF89a") is None
    assert [draft_scale(328, 240, s) for s in (30, 32, 60, 64, 120, 121, 241)] == [8, 4, 4, 2, 2, 1, 1]
