"""read_image / write_image: RGB order, gray and alpha pictures, and clear errors."""
import cv2
import numpy as np
import pytest

from bodyfit.data.images import read_image, write_image


def _picture(h=20, w=30):
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (h, w, 3), dtype=np.uint8)


def test_round_trip_png_is_exact_and_rgb(tmp_path):
    img = _picture()
    img[0, 0] = (255, 0, 0)  # pure red must stay in channel 0
    p = write_image(tmp_path / "a" / "b" / "pic.png", img)  # parent folders are created
    assert p.is_file()
    back = read_image(p)
    assert back.dtype == np.uint8 and back.shape == img.shape
    np.testing.assert_array_equal(back, img)
    # the file on disk is a normal BGR-ordered PNG: OpenCV sees red in its last channel
    assert tuple(cv2.imread(str(p))[0, 0]) == (0, 0, 255)


def test_round_trip_jpeg_is_close(tmp_path):
    img = np.full((32, 32, 3), (200, 100, 50), np.uint8)
    back = read_image(write_image(tmp_path / "pic.jpg", img))
    assert np.abs(back.astype(int) - img).max() <= 3


def test_write_float_and_gray(tmp_path):
    mask = np.zeros((8, 8), np.float32)
    mask[2:6, 2:6] = 1.0
    back = read_image(write_image(tmp_path / "mask.png", mask))
    assert back.shape == (8, 8, 3)
    assert back[3, 3].tolist() == [255, 255, 255] and back[0, 0].tolist() == [0, 0, 0]
    with pytest.raises(ValueError, match="H, W, 3"):
        write_image(tmp_path / "bad.png", np.zeros((4, 4, 4), np.uint8))


def test_grayscale_png_becomes_three_equal_channels(tmp_path):
    gray = np.arange(20 * 30, dtype=np.uint8).reshape(20, 30)
    p = tmp_path / "gray.png"
    assert cv2.imwrite(str(p), gray)
    img = read_image(p)
    assert img.shape == (20, 30, 3) and img.dtype == np.uint8
    for c in range(3):
        np.testing.assert_array_equal(img[..., c], gray)


def test_rgba_png_drops_alpha_keeps_rgb_order(tmp_path):
    rgb = _picture()
    bgra = np.dstack([rgb[..., ::-1], np.full(rgb.shape[:2], 7, np.uint8)])
    p = tmp_path / "rgba.png"
    assert cv2.imwrite(str(p), bgra)
    img = read_image(p)
    assert img.shape == rgb.shape
    np.testing.assert_array_equal(img, rgb)


def test_missing_file_names_the_path(tmp_path):
    p = tmp_path / "nope.png"
    with pytest.raises(FileNotFoundError, match="nope.png"):
        read_image(p)


def test_corrupt_file_is_a_value_error(tmp_path):
    ok, buf = cv2.imencode(".png", _picture(50, 60))
    p = tmp_path / "corrupt.png"
    p.write_bytes(buf.tobytes()[: len(buf) // 2])  # truncated half-way
    with pytest.raises(ValueError, match="corrupt.png.*cannot be decoded as an image"):
        read_image(p)
    junk = tmp_path / "junk.png"
    junk.write_bytes(np.random.default_rng(1).bytes(500))
    with pytest.raises(ValueError, match="junk.png"):
        read_image(junk)
    txt = tmp_path / "notes.jpg"
    txt.write_text("hello")
    with pytest.raises(ValueError, match="cannot be decoded"):
        read_image(txt)


def test_empty_file_is_a_value_error(tmp_path):
    p = tmp_path / "empty.jpg"
    p.write_bytes(b"")
    with pytest.raises(ValueError, match="empty.jpg.*cannot be decoded as an image"):
        read_image(p)


def test_non_ascii_path(tmp_path):
    img = _picture(5, 6)
    p = write_image(tmp_path / "häuser" / "bild_ü.png", img)
    np.testing.assert_array_equal(read_image(p), img)
