"""bodyfit.files: atomic writes leave the old file or the new one, never a part, and no litter;
run folders are held by one run at a time."""
import json
import logging
import os
import signal
import socket
import stat

import numpy as np
import pytest
import torch

from bodyfit.files import (LOCK_FILE, FolderLockedError, atomic_save_npz, atomic_torch_save, atomic_write,
                           atomic_write_bytes, atomic_write_text, run_lock)


class Boom(RuntimeError):
    pass


def _litter(folder):
    return [p.name for p in folder.iterdir() if p.name.endswith(".tmp")]


def test_failure_inside_write_keeps_the_old_file_and_leaves_no_temp_file(tmp_path):
    path = tmp_path / "data.bin"
    path.write_bytes(b"old content")

    def half_then_fail(fh):
        fh.write(b"new cont")  # part of the new content is on disk in the temporary file ...
        fh.flush()
        assert _litter(tmp_path)  # ... beside the destination, under another name
        raise Boom("disk full")

    with pytest.raises(Boom, match="disk full"):
        atomic_write(path, half_then_fail)
    assert path.read_bytes() == b"old content"
    assert _litter(tmp_path) == [] and sorted(os.listdir(tmp_path)) == ["data.bin"]
    # a KeyboardInterrupt (BaseException) cleans up as well; no destination is made from nothing
    fresh = tmp_path / "fresh.bin"

    def interrupted(fh):
        fh.write(b"x")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        atomic_write(fresh, interrupted)
    assert not fresh.exists() and _litter(tmp_path) == []


def test_the_result_is_complete(tmp_path):
    blob = np.random.default_rng(0).bytes(3 << 20)  # several MB: more than one buffer
    out = atomic_write(tmp_path / "big.bin", lambda fh: [fh.write(blob[i:i + 65536])
                                                         for i in range(0, len(blob), 65536)])
    assert out == tmp_path / "big.bin" and out.read_bytes() == blob
    atomic_write_bytes(out, b"replaced")  # over an existing file
    assert out.read_bytes() == b"replaced"
    atomic_write_text(tmp_path / "t.txt", "a\nb\u00e9\n")
    assert (tmp_path / "t.txt").read_bytes() == "a\nb\u00e9\n".encode()
    arrays = {"x": np.arange(12.0).reshape(3, 4), "step": np.int64(7), "tag": np.array("v1")}
    for compress in (False, True):
        p = atomic_save_npz(tmp_path / f"r{compress}.npz", compress=compress, **arrays)
        with np.load(p, allow_pickle=False) as z:
            assert sorted(z.files) == ["step", "tag", "x"]
            np.testing.assert_array_equal(z["x"], arrays["x"])
            assert int(z["step"]) == 7 and str(z["tag"]) == "v1"
    with pytest.raises(ValueError, match="dtype object"):
        atomic_save_npz(tmp_path / "o.npz", bad=np.array([{"a": 1}], dtype=object))
    assert not (tmp_path / "o.npz").exists()
    obj = {"w": torch.arange(5.0), "step": 3, "config": {"lr": 1e-3, "names": ["a", "b"]}}
    atomic_torch_save(obj, tmp_path / "c.pt")
    back = torch.load(tmp_path / "c.pt", weights_only=True)
    assert torch.equal(back["w"], obj["w"]) and back["step"] == 3 and back["config"] == obj["config"]
    assert _litter(tmp_path) == []


def test_new_files_get_the_usual_permissions(tmp_path):
    old = os.umask(0o022)
    try:
        p = atomic_write_bytes(tmp_path / "f", b"1")
    finally:
        os.umask(old)
    assert stat.S_IMODE(p.stat().st_mode) == 0o644  # as open() would make it, not mkstemp's 0600


def test_missing_folder_is_an_error(tmp_path):
    with pytest.raises(FileNotFoundError):
        atomic_write_bytes(tmp_path / "no" / "such" / "f", b"1")


def test_run_lock_refuses_a_second_run_and_takes_over_a_killed_ones(tmp_path, caplog, folder_holder):
    run = tmp_path / "run"
    proc = folder_holder(run)
    with pytest.raises(FolderLockedError) as e:
        with run_lock(run, "second"):
            pass
    msg = str(e.value)
    assert str(run) in msg and f"pid {proc.pid}" in msg and socket.gethostname() in msg
    assert "another --out" in msg and e.value.holder["pid"] == proc.pid
    proc.send_signal(signal.SIGKILL)  # killed: it never releases the lock by itself
    proc.wait(30)
    with caplog.at_level(logging.WARNING, logger="bodyfit"):
        with run_lock(run, "third") as path:
            assert json.loads(path.read_text())["pid"] == os.getpid()
            with run_lock(run, "nested"):  # the same process again: fine
                pass
            assert json.loads(path.read_text())["pid"] == os.getpid()
    assert f"pid {proc.pid}" in caplog.text and "taking over" in caplog.text
    assert (run / LOCK_FILE).read_text() == ""  # released cleanly: nothing stale next time
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="bodyfit"):
        with run_lock(run):
            pass
    assert caplog.text == ""
