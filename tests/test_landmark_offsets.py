"""Anny's landmarks moved to where the keypoint detector puts them (keypoint_tables.ANNY_LANDMARK_OFFSETS)."""
import torch

from bodyfit.body_models.anny_model import AnnyModel
from bodyfit.body_models.keypoint_tables import mirrored_offsets, shifted_landmark_weights


def test_shift_moves_the_rest_landmark_exactly_and_keeps_weights_summing_to_one():
    g = torch.Generator().manual_seed(0)
    verts = torch.rand(500, 3, generator=g, dtype=torch.float64) * 0.4
    W = torch.zeros(3, 500, dtype=torch.float64)
    W[0, :5] = 0.2
    W[1, 100:110] = 0.1
    W[2, 200] = 1.0
    names = ["nose", "left_ear", "right_ear"]
    d = (0.01, -0.03, 0.02)
    W2 = shifted_landmark_weights(W, verts, names, {"left_ear": d})
    moved = W2 @ verts - W @ verts
    assert torch.allclose(moved[1], torch.tensor(d, dtype=torch.float64), atol=1e-9)
    assert torch.allclose(moved[2], torch.tensor((-d[0], d[1], d[2]), dtype=torch.float64), atol=1e-9)  # mirrored twin
    assert torch.equal(W2[0], W[0])  # no offset, unchanged
    assert torch.allclose(W2.sum(1), W.sum(1), atol=1e-12)
    assert mirrored_offsets({"right_ear": (1.0, 0, 0), "left_ear": d})["right_ear"] == (1.0, 0, 0)  # given twins win


def test_anny_with_offsets_moves_only_those_landmarks_consistently_in_both_paths(anny):
    d = (-0.03, -0.04, 0.01)  # inward, forward, up (Anny's rest frame)
    plain = AnnyModel(full=anny.anny, landmark_offsets={})
    moved = AnnyModel(full=anny.anny, landmark_offsets={"left_ear": d})
    p = plain.default_params(2)
    p.body_pose = torch.randn(p.body_pose.shape, generator=torch.Generator().manual_seed(1)) * 0.2
    a = plain(p, vertices=False).joints
    b = moved(p, vertices=False).joints
    names = plain.joint_names
    le, re = names.index("left_ear"), names.index("right_ear")
    others = [k for k in range(len(names)) if k not in (le, re)]
    assert torch.allclose(a[:, others], b[:, others], atol=1e-6)
    # In the rest pose the offset is the rest-frame one turned into bodyfit's world frame, within a
    # few millimetres (the average phenotype's blend shapes move the vertices that carry it).
    rest = plain.default_params(1)
    shift = moved(rest, vertices=False).joints[0] - plain(rest, vertices=False).joints[0]
    want = plain.up_to_camera @ torch.tensor(d)
    assert torch.allclose(shift[le], want, atol=5e-3), (shift[le], want)
    assert torch.allclose(shift[re], plain.up_to_camera @ torch.tensor((-d[0], d[1], d[2])), atol=5e-3)
    # Posed, the shifted landmark stays a few centimetres from the plain one, and the joints-only
    # path equals the vertex regressor's.
    assert ((b[:, le] - a[:, le]).norm(dim=-1) - torch.tensor(d).norm()).abs().max() < 0.01
    out = moved(p, vertices=True)
    regressed = torch.einsum("kv,bvd->bkd", moved.vertex_regressor, out.vertices)
    assert torch.allclose(b[:, :regressed.shape[1]], regressed, atol=5e-4)


def test_unknown_landmark_set_is_refused_with_the_choices():
    import pytest

    from bodyfit.body_models import body_model

    with pytest.raises(ValueError, match="mediapipe or coco"):
        body_model("anny", landmarks="openpose")
