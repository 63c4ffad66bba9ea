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


# -- pixel budget and decompression bombs --------------------------------------------------------

def _png_header_only(width, height):
    """A PNG that declares ``width`` x ``height`` RGB but holds a few bytes of data."""
    import struct
    import zlib

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"\x00" * 100)) + chunk(b"IEND", b""))


def test_declared_size_is_read_without_decoding(tmp_path):
    from bodyfit.data.images import picture_size

    img = _picture(37, 53)
    for ext in (".png", ".jpg", ".bmp", ".webp", ".tif", ".ppm"):
        ok, buf = cv2.imencode(ext, img)
        (tmp_path / f"p{ext}").write_bytes(buf.tobytes())
        assert picture_size(tmp_path / f"p{ext}") == (37, 53), ext
    ok, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_PROGRESSIVE, 1])
    (tmp_path / "prog.jpg").write_bytes(buf.tobytes())
    assert picture_size(tmp_path / "prog.jpg") == (37, 53)
    (tmp_path / "bomb.png").write_bytes(_png_header_only(100000, 90000))
    assert picture_size(tmp_path / "bomb.png") == (90000, 100000)


def test_working_size_keeps_the_budget_and_matches_the_camera():
    from bodyfit.cameras import Camera, default_intrinsics
    from bodyfit.data.images import working_size

    assert working_size((3000, 4000), None) == ((3000, 4000), 1.0)
    assert working_size((3000, 4000), 12_000_000) == ((3000, 4000), 1.0)
    for H, W, budget in [(9000, 9000, 4096 * 4096), (3001, 20000, 1_000_000), (7, 100000, 5000)]:
        (h, w), s = working_size((H, W), budget)
        assert h * w <= budget and (h * w > 0.95 * budget or h == 1)
        cam = Camera.identity(default_intrinsics((H, W)), (H, W))
        assert cam.at_most(max(h, w))[0].image_size == (h, w)  # the camera of the working picture
        assert s == max(h, w) / max(H, W)


def test_a_decompression_bomb_is_refused_before_decoding(tmp_path):
    p = tmp_path / "bomb.png"
    p.write_bytes(_png_header_only(100000, 100000))
    with pytest.raises(ValueError, match=r"bomb\.png.*declares a 100000x100000 picture.*decompression bomb"):
        read_image(p)
    from bodyfit.data.images import read_picture

    with pytest.raises(ValueError, match="decompression bomb"):
        read_picture(p, max_pixels=1000)  # a PNG is decoded whole, whatever the budget


def test_a_folder_is_not_called_missing(tmp_path):
    with pytest.raises(IsADirectoryError, match="is a folder, not a picture file"):
        read_image(tmp_path)


def test_pixel_budget_reads_a_smaller_picture_at_the_same_place(tmp_path):
    """Downscaled the way the camera is (Camera.at_most): a feature keeps its place."""
    from bodyfit.data.images import read_picture

    img = np.zeros((1200, 1600, 3), np.uint8)
    img[600:700, 1000:1100] = (255, 0, 0)  # a red square centred at (1049.5, 649.5)
    p = write_image(tmp_path / "big.png", img)
    small, full = read_picture(p, max_pixels=400 * 300)
    assert full == (1200, 1600) and small.shape == (300, 400, 3)
    ys, xs = np.nonzero(small[..., 0] > 128)
    s = 400 / 1600
    assert abs(xs.mean() - ((1049.5 + 0.5) * s - 0.5)) < 0.6 and abs(ys.mean() - ((649.5 + 0.5) * s - 0.5)) < 0.6
    assert (small[ys, xs, 1] < 30).all()  # still red: RGB order
    same, full = read_picture(p, max_pixels=None)
    np.testing.assert_array_equal(same, img)


MEASURE = r"""
import resource, sys
from bodyfit.data.images import read_picture
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
rgb, full = read_picture(sys.argv[1], int(sys.argv[2]))
grown = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
print(rgb.shape[0], rgb.shape[1], full[0], full[1], grown // 1024, int(rgb[..., 0].mean()), int(rgb[..., 2].mean()))
"""


def test_huge_jpeg_is_decoded_reduced_under_a_memory_bound(tmp_path):
    """A 9000 x 9000 JPEG (243 MB as RGB; a full decode grows the process by about 470 MB) is
    read within its pixel budget: libjpeg decodes it at 1/2, the peak memory grows by less than
    160 MB (measured: about 120 MB) in a fresh process."""
    import subprocess
    import sys

    small = cv2.GaussianBlur(np.random.default_rng(0).integers(0, 256, (120, 120, 3), dtype=np.uint8), (9, 9), 3)
    small[..., 0] = 200  # red channel high, blue varying: the RGB order is checked too
    big = cv2.resize(small, (9000, 9000), interpolation=cv2.INTER_LINEAR)
    path = tmp_path / "huge.jpg"
    assert cv2.imwrite(str(path), cv2.cvtColor(big, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 85])
    blue = int(big[..., 2].mean())
    del big
    out = subprocess.run([sys.executable, "-c", MEASURE, str(path), str(4096 * 4096)], capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    h, w, H, W, grown_mb, red, blue_read = map(int, out.stdout.split())
    assert (h, w, H, W) == (4096, 4096, 9000, 9000)
    assert abs(red - 200) <= 3 and abs(blue_read - blue) <= 3
    assert grown_mb < 160, f"reading grew the process by {grown_mb} MB"
