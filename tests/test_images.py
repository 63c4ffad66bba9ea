"""read_image / write_image / read_video_frames: RGB order, gray and alpha pictures, frame
selection, and clear errors."""
import cv2
import numpy as np
import pytest

from bodyfit.data.images import read_image, read_video_frames, write_image


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


def _video(path, n=8, size=(24, 32)):
    """A lossless-enough video whose frame i is gray level 20 * i with a red top-left pixel."""
    h, w = size
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10, (w, h))
    assert writer.isOpened()
    for i in range(n):
        bgr = np.full((h, w, 3), 20 * i, np.uint8)
        bgr[:8, :8] = (0, 0, 255)
        writer.write(bgr)
    writer.release()
    return path


def _index(frame):
    return int(round(float(frame[12:, 12:].mean()) / 20))


def test_video_frames_every_nth_and_chosen(tmp_path):
    video = _video(tmp_path / "v.avi")
    got = list(read_video_frames(video))
    assert [n for n, _ in got] == [f"frame_{i:06d}" for i in range(8)]
    assert [_index(f) for _, f in got] == list(range(8))
    frame = got[0][1]
    assert frame.dtype == np.uint8 and frame.shape == (24, 32, 3) and frame.flags["C_CONTIGUOUS"]
    assert frame[2, 2, 0] > 200 and frame[2, 2, 2] < 60  # RGB: red in channel 0
    assert [n for n, _ in read_video_frames(video, every=3)] == ["frame_000000", "frame_000003",
                                                                  "frame_000006"]
    assert len(list(read_video_frames(video, every=2, max_frames=2))) == 2
    chosen = list(read_video_frames(video, frames=[5, 1, 5]))  # distinct, increasing
    assert [n for n, _ in chosen] == ["frame_000001", "frame_000005"]
    assert [_index(f) for _, f in chosen] == [1, 5]
    with pytest.raises(IndexError, match="Frame 8 is past the end"):
        list(read_video_frames(video, frames=[7, 8]))
    with pytest.raises(ValueError, match=">= 0"):
        read_video_frames(video, frames=[-1])
    with pytest.raises(ValueError, match=">= 1"):
        read_video_frames(video, every=0)
    with pytest.raises(FileNotFoundError, match="nothing.avi"):
        read_video_frames(tmp_path / "nothing.avi")
    (tmp_path / "junk.avi").write_bytes(b"not a video")
    with pytest.raises(ValueError, match="junk.avi"):
        list(read_video_frames(tmp_path / "junk.avi"))


def test_write_image_is_atomic(tmp_path, monkeypatch):
    """A failure while writing keeps the previous picture and leaves no temporary file."""
    import bodyfit.files

    p = write_image(tmp_path / "pic.png", _picture())
    before = p.read_bytes()

    def fail(fh):
        raise OSError("disk full")

    real = bodyfit.files.atomic_write
    monkeypatch.setattr(bodyfit.files, "atomic_write", lambda path, write: real(path, fail))
    with pytest.raises(OSError, match="disk full"):
        write_image(p, np.zeros((5, 5, 3), np.uint8))
    assert p.read_bytes() == before and sorted(x.name for x in tmp_path.iterdir()) == ["pic.png"]
