"""The learned pose prior (bodyfit.priors.gmm, energy ``gmm_prior``)."""
from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch
from scipy.stats import multivariate_normal

from bodyfit.priors.gmm import ANNY_POSE_GMM, PoseGMM, load_pose_gmm, save_pose_gmm


def _random_mixture(K=3, J=2, seed=0):
    rng = np.random.default_rng(seed)
    D = 3 * J
    means = rng.normal(0, 0.5, (K, D))
    A = rng.normal(0, 0.3, (K, D, D))
    covs = A @ A.transpose(0, 2, 1) + 0.05 * np.eye(D)
    weights = rng.uniform(0.2, 1.0, K)
    return means, covs, weights, [f"joint{j}" for j in range(J)]


def test_energy_is_the_max_mixture_negative_log_likelihood():
    means, covs, weights, joints = _random_mixture()
    gmm = PoseGMM(means, covs, weights, joints)
    x = np.random.default_rng(1).normal(0, 0.6, (5, 6))
    w = weights / weights.sum()
    # -log(w_k N(x; mu_k, S_k)) = 0.5 m^2 - log w_k + 0.5 log det S_k + D/2 log(2 pi)
    nll = np.stack([-np.log(w[k]) - multivariate_normal(means[k], covs[k]).logpdf(x) for k in range(3)], 1)
    const = min(-np.log(w[k]) + 0.5 * np.linalg.slogdet(covs[k])[1] for k in range(3)) + 3 * np.log(2 * np.pi)
    expected = nll.min(1) - const
    got = gmm(torch.tensor(x).reshape(5, 2, 3)).numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)
    assert (got >= -1e-5).all()


def test_gradient_matches_finite_differences():
    means, covs, weights, joints = _random_mixture(seed=2)
    gmm = PoseGMM(means, covs, weights, joints).double()
    x = torch.tensor(np.random.default_rng(3).normal(0, 0.4, (4, 2, 3)), requires_grad=True)
    assert torch.autograd.gradcheck(lambda p: gmm(p), (x,))


def test_bad_mixtures_are_refused():
    means, covs, weights, joints = _random_mixture()
    with pytest.raises(ValueError, match="joint names"):
        PoseGMM(means, covs, weights, joints[:1])
    bad = covs.copy()
    bad[1] = -np.eye(6)
    with pytest.raises(ValueError, match=r"\[1\] are not positive definite"):
        PoseGMM(means, bad, weights, joints)
    with pytest.raises(ValueError, match="finite"):
        PoseGMM(np.full_like(means, np.nan), covs, weights, joints)


def test_npz_round_trip_and_wrong_model(tmp_path, anny):
    means, covs, weights, _ = _random_mixture(J=2)
    joints = ["upperleg01.L", "lowerleg01.L"]
    path = save_pose_gmm(tmp_path / "p.npz", means, covs, weights, joints, model="anny", source="test")
    gmm = load_pose_gmm(path, anny)
    assert gmm.joint_index(anny) == [anny.pose_joint_names.index(j) for j in joints]
    x = torch.randn(3, 2, 3)
    np.testing.assert_allclose(gmm(x).numpy(), PoseGMM(means, covs, weights, joints)(x).numpy(), rtol=1e-6)
    other = save_pose_gmm(tmp_path / "q.npz", means, covs, weights, ["left_hip", "left_knee"], model="smpl")
    with pytest.raises(ValueError, match="another body model"):
        load_pose_gmm(other, anny)
    np.savez(tmp_path / "r.npz", means=means)
    with pytest.raises(ValueError, match="not a pose GMM"):
        load_pose_gmm(tmp_path / "r.npz", anny)
    with pytest.raises(FileNotFoundError):
        load_pose_gmm(tmp_path / "none.npz", anny)


class _Evil:
    def __reduce__(self):
        import os
        return (os.system, ("echo never",))


def test_smplify_pickle_is_read_without_running_code(tmp_path):
    from bodyfit.body_models.smpl_files import UnsafePickleError

    class SMPLLike:  # what load_pose_gmm reads of a model
        name = "smpl"
        pose_joint_names = [f"j{i}" for i in range(23)]

    rng = np.random.default_rng(0)
    covs = np.stack([np.eye(69) * s for s in (0.1, 0.2)])
    path = tmp_path / "gmm_08.pkl"
    path.write_bytes(pickle.dumps({"means": rng.normal(0, 0.1, (2, 69)), "covars": covs,
                                   "weights": np.array([0.3, 0.7])}, protocol=2))
    gmm = load_pose_gmm(path, SMPLLike())
    assert gmm.num_components == 2 and len(gmm.joints) == 23

    class SMPLXLike(SMPLLike):  # 21 body joints: the marginal over the first 63 numbers
        name = "smplx"
        pose_joint_names = [f"j{i}" for i in range(21)]

    assert load_pose_gmm(path, SMPLXLike()).means.shape == (2, 63)
    evil = tmp_path / "evil.pkl"
    evil.write_bytes(pickle.dumps({"means": _Evil()}, protocol=2))
    with pytest.raises(UnsafePickleError):
        load_pose_gmm(evil, SMPLLike())


def test_packaged_anny_prior_prefers_real_poses(anny):
    """The shipped prior scores Anny's rest pose with the arms lowered (a standing person) far
    below the same body with a knee bent backwards or an arm twisted behind the back."""
    gmm = load_pose_gmm(ANNY_POSE_GMM, anny)
    idx = gmm.joint_index(anny)
    assert sorted(idx) == sorted(anny.free_pose_joints)
    from bodyfit.data.synthetic import sample_params

    drawn = sample_params(anny, 256, torch.Generator().manual_seed(0), spread=0.35).body_pose
    wild = sample_params(anny, 256, torch.Generator().manual_seed(1), spread=1.5).body_pose
    e_drawn, e_wild = gmm(drawn[:, idx]), gmm(wild[:, idx])
    assert torch.isfinite(e_wild).all()
    assert float(e_drawn.median()) < float(e_wild.median())


def test_fit_with_gmm_prior_recovers_the_body(anny):
    from bodyfit import fit
    from bodyfit.data.synthetic import synthetic_batch
    from bodyfit.metrics import pa_mpjpe

    sb = synthetic_batch(anny, 4, generator=torch.Generator().manual_seed(4))
    r = fit(sb.keypoints, anny, K=sb.K, boxes=sb.boxes, vertices=False,
            overrides=["stages.body.weights.gmm_prior=5e-4"])
    assert "gmm_prior" not in r.skipped_energies and bool(r.valid.all())
    assert float(r.energies["gmm_prior"].mean()) > 0
    assert float(pa_mpjpe(r.joints[:, :17], sb.joints[:, :17]).max()) < 60.0


def test_smpl_without_a_gmm_file_leaves_the_prior_out(tmp_path):
    pytest.importorskip("smplx")
    from synthetic_smpl import write_synthetic_smpl

    from bodyfit import fit
    from bodyfit.body_models import body_model
    from bodyfit.data.synthetic import synthetic_batch

    smpl = body_model("smpl", model_path=write_synthetic_smpl(tmp_path / "SMPL_NEUTRAL.pkl", "pkl"))
    sb = synthetic_batch(smpl, 2, generator=torch.Generator().manual_seed(0))
    over = ["stages.body.weights.gmm_prior=1e-3", "stages.body.steps=5", "stages.camera.steps=5"]
    r = fit(sb.keypoints, smpl, K=sb.K, boxes=sb.boxes, vertices=False, overrides=over)
    assert "gmm_prior" in r.skipped_energies and bool(r.valid.all())
    # with the user's own SMPLify file it is used
    rng = np.random.default_rng(0)
    path = tmp_path / "gmm_08.pkl"
    path.write_bytes(pickle.dumps({"means": rng.normal(0, 0.1, (2, 69)), "covars": np.stack([np.eye(69)] * 2),
                                   "weights": np.array([0.5, 0.5])}, protocol=2))
    r = fit(sb.keypoints, smpl, K=sb.K, boxes=sb.boxes, vertices=False, overrides=over + [f"gmm_file={path}"])
    assert "gmm_prior" not in r.skipped_energies and float(r.energies["gmm_prior"].mean()) > 0


def test_samples_follow_the_mixture():
    means, covs, weights, joints = _random_mixture(K=2, J=1, seed=5)
    gmm = PoseGMM(means, covs, weights, joints).double()
    x = gmm.sample(40000, torch.Generator().manual_seed(0)).reshape(40000, 3).numpy()
    w = weights / weights.sum()
    mean = (w[:, None] * means).sum(0)
    cov = sum(w[k] * (covs[k] + np.outer(means[k] - mean, means[k] - mean)) for k in range(2))
    np.testing.assert_allclose(x.mean(0), mean, atol=0.02)
    np.testing.assert_allclose(np.cov(x, rowvar=False), cov, atol=0.03)


def test_synthetic_bodies_posed_by_the_prior(anny):
    from bodyfit.data.synthetic import sample_params

    gmm = load_pose_gmm(ANNY_POSE_GMM, anny)
    idx = gmm.joint_index(anny)
    g = lambda: torch.Generator().manual_seed(3)  # noqa: E731
    real = sample_params(anny, 64, g(), pose_prior=gmm, prior_share=1.0).body_pose[:, idx]
    drawn = sample_params(anny, 64, g()).body_pose[:, idx]
    assert float(gmm(real).median()) < 0.7 * float(gmm(drawn).median())
