"""A corrupt fit-store record is named, set aside and refitted: it never blocks a run."""

import numpy as np
import pytest
import torch

from bodyfit.body_models.base import BodyParams
from bodyfit.files import atomic_save_npz
from bodyfit.regressors.fit_store import CorruptRecord, FitStore, load_record

J, S = 5, 6  # a small body: 5 pose joints, 6 shape values


def _params(n, value=0.0):
    return BodyParams(torch.zeros(n, 3), torch.full((n, J, 3), value), torch.full((n, S), 0.5), torch.zeros(n, 3))


@pytest.fixture
def store_log(log_records):
    """Records of the fit store's logger, warnings and up."""
    return log_records("bodyfit.regressors.fit_store")


def _filled(root, ids):
    store = FitStore(root)
    n = len(ids)
    ok = torch.ones(n, dtype=torch.bool)
    assert store.update(ids, _params(n), torch.ones(n), torch.full((n,), 0.01), ok).all()
    return store


def test_corrupt_records_are_named_set_aside_and_refitted(tmp_path, store_log):
    store = _filled(tmp_path / "store", ["rand", "cut", "nan", "shape", "good"])
    fits = tmp_path / "store" / "fits"
    (fits / "rand.npz").write_bytes(np.random.default_rng(0).bytes(3000))  # random bytes
    whole = (fits / "cut.npz").read_bytes()
    (fits / "cut.npz").write_bytes(whole[: len(whole) // 2])  # truncated
    rec = load_record(fits / "nan.npz")
    rec["body_pose"][2, 1] = np.nan
    atomic_save_npz(fits / "nan.npz", **rec)  # NaN inside
    rec = load_record(fits / "shape.npz")
    rec["body_pose"] = np.zeros((J + 2, 3))
    atomic_save_npz(fits / "shape.npz", **rec)  # another body's record

    got, have = store.batch(["rand", "cut", "nan", "shape", "good", "never"], _params(1))  # no exception
    assert have.tolist() == [False, False, False, False, True, False]
    messages = [r.getMessage() for r in store_log]
    assert len(messages) == 4
    for name, why in [("rand", "unreadable"), ("cut", "unreadable"), ("nan", "'body_pose' holds NaN"),
                      ("shape", "wrong shape: body_pose (7, 3) (expected (5, 3))")]:
        line = next(m for m in messages if f"{fits / name}.npz is corrupt" in m)
        assert why in line and f"moved to {tmp_path / 'store' / 'corrupt' / name}.npz" in line
        assert "will be fitted again" in line
    assert sorted(p.name for p in (tmp_path / "store" / "corrupt").iterdir()) == [
        "cut.npz", "nan.npz", "rand.npz", "shape.npz"]
    assert store.ids() == ["good"] and store.get("rand") is None

    # refitted: any plausible fit is stored again, however its energy compares with the lost one
    stored = store.update(["rand", "cut"], _params(2, 0.1), torch.full((2,), 5.0), torch.full((2,), 0.01),
                          torch.ones(2, dtype=torch.bool))
    assert stored.tolist() == [True, True] and store.ids() == ["cut", "good", "rand"]

    (fits / "rand.npz").write_bytes(b"PK\x03\x04 broken again")  # a second corruption of one id
    assert store.get("rand") is None
    assert (tmp_path / "store" / "corrupt" / "rand.1.npz").exists()  # the first one is kept too


def test_a_corrupt_record_met_while_updating_is_replaced(tmp_path, store_log):
    store = _filled(tmp_path / "store", ["a"])
    (tmp_path / "store" / "fits" / "a.npz").write_bytes(b"")  # an empty file
    stored = store.update(["a"], _params(1), torch.full((1,), 9.0), torch.full((1,), 0.01),
                          torch.ones(1, dtype=torch.bool))
    assert stored.tolist() == [True] and float(store.get("a")["energy"]) == 9.0
    assert len(store_log) == 1 and "a.npz is corrupt" in store_log[0].getMessage()


def test_load_record_says_what_is_wrong(tmp_path):
    p = tmp_path / "x.npz"
    np.savez(p, energy=np.float64(1.0))
    with pytest.raises(CorruptRecord, match="missing"):
        load_record(p)
    p.write_bytes(b"not a zip")
    with pytest.raises(CorruptRecord, match="unreadable"):
        load_record(p)
    with pytest.raises(FileNotFoundError):
        load_record(tmp_path / "none.npz")
