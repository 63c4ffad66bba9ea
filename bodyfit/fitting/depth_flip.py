"""Per-limb depth-flip trial: where the detector's world landmarks and the 2D fit disagree on
which way a limb points in depth, also try the limb flipped and keep the lower energy.

2D keypoints fix each limb's joints up to a two-way choice per bone: a child joint on its camera
ray at the bone's length from its parent lies at one of two depths (the roots of
``|s r - p| = L``). SMPLify settles the whole body's version of this (facing towards or away)
by fitting both and keeping the lower energy (``Fitter``'s 180-degree trial); this does the
same per limb (upper arm + forearm, thigh + shin), triggered by the world landmarks
(:mod:`bodyfit.fitting.world_landmarks`):

1. after the last stage, each limb of a one-view sample whose bone directions' depth sign
   disagrees with the world landmarks' (``|u_z| > flip_min_depth`` for the landmarks, both ends
   confident) is a candidate;
2. its joints are moved to the other root along their rays (:func:`flip_point`) and the limb's
   two joints' rotations are solved for those points (a few Adam steps of inverse kinematics);
3. the last stage runs again from there; the candidate is kept where its stage energy plus
   ``world_flip`` times the world-landmark energy is lower than the original fit's.
"""
from __future__ import annotations

import torch

from bodyfit.body_models.conventions import keypoint_names
from bodyfit.fitting.world_landmarks import WorldLandmarksEnergy, unit, view_rotation

#: (name, (parent, middle, end) keypoints, pose joints per model family: (upper, lower))
LIMBS = (
    ("left_arm", ("left_shoulder", "left_elbow", "left_wrist"),
     {"anny": ("upperarm01.L", "lowerarm01.L"), "smpl": ("left_shoulder", "left_elbow")}),
    ("right_arm", ("right_shoulder", "right_elbow", "right_wrist"),
     {"anny": ("upperarm01.R", "lowerarm01.R"), "smpl": ("right_shoulder", "right_elbow")}),
    ("left_leg", ("left_hip", "left_knee", "left_ankle"),
     {"anny": ("upperleg01.L", "lowerleg01.L"), "smpl": ("left_hip", "left_knee")}),
    ("right_leg", ("right_hip", "right_knee", "right_ankle"),
     {"anny": ("upperleg01.R", "lowerleg01.R"), "smpl": ("right_hip", "right_knee")}),
)


def flip_point(parent: torch.Tensor, child: torch.Tensor) -> torch.Tensor:
    """The other point on ``child``'s camera ray at the same distance from ``parent``.

    Args:
        parent, child: (...,3) metres, camera frame (the camera at the origin).
    Returns:
        (...,3): ``(2 r.p - |c|) r`` with r the unit ray through ``child`` (the second root of
        ``|s r - p| = |c - p|``); the same projection, the other depth.
    """
    r = unit(child)
    s = child.norm(dim=-1, keepdim=True)
    return (2 * (r * parent).sum(-1, keepdim=True) - s) * r


def place_on_ray(parent: torch.Tensor, child: torch.Tensor, length: torch.Tensor, nearer: torch.Tensor) -> torch.Tensor:
    """A point on ``child``'s ray at ``length`` from ``parent``: the nearer root where ``nearer``
    ((...,) bool), else the farther; the closest point of the ray when no root exists."""
    r = unit(child)
    rp = (r * parent).sum(-1)
    disc = (rp ** 2 - (parent ** 2).sum(-1) + length ** 2).clamp(min=0).sqrt()
    s = torch.where(nearer, rp - disc, rp + disc)
    return s[..., None] * r


def limb_flip_trial(fitter, problem, prepared: dict, result, init, stage):
    """Run the trial (module docstring) after the last stage.

    Args:
        fitter: the Fitter. problem: its Problem (one view). prepared: the energies' data.
        result: the last stage's StageResult (B). init: the start BodyParams (B). stage: the last
            StageConfig.
    Returns:
        ``(result, flipped)``: the StageResult with the kept candidates put in, and (B,4) bool,
        the limbs (:data:`LIMBS` order) that were flipped.
    """
    model, cfg = fitter.model, fitter.config
    B = problem.batch_size
    flipped = torch.zeros(B, len(LIMBS), dtype=torch.bool, device=model.device)
    family = "anny" if model.name == "anny" else "smpl"
    world = WorldLandmarksEnergy(model, cfg)
    wdata = world.prepare(problem)
    if wdata is None or problem.num_views != 1:
        return result, flipped
    names = keypoint_names(problem.observations.convention)
    if not all(n in names for _, kps, _ in LIMBS for n in kps):
        return result, flipped
    wk = problem.observations.clean_world_keypoints()[:, 0].to(model.device, model.dtype)  # (B,K,4)
    hips = (names.index("left_hip"), names.index("right_hip"))
    Rv = view_rotation(problem.keypoints[:, 0], problem.cameras[0].K,
                       "camera" if cfg.world_frame == "camera" else "ray", hips)
    wcam = torch.einsum("bij,bkj->bki", Rv, wk[..., :3])
    cam = problem.cameras[0]
    with torch.no_grad():
        lm = cam.to_camera_frame(model(result.params, vertices=False).joints)[:, problem.kp_index]
    conf = wk[..., 3]
    cands = []  # (sample, limb, targets (2,3))
    for li, (_, kps, _) in enumerate(LIMBS):
        a, m, e = (names.index(n) for n in kps)
        bad = torch.zeros(B, dtype=torch.bool, device=model.device)
        flip_bone = []
        for p, c in ((a, m), (m, e)):
            dz_w = unit(wcam[:, c] - wcam[:, p])[:, 2]
            dz_m = unit(lm[:, c] - lm[:, p])[:, 2]
            ok = (conf[:, p] > 0.5) & (conf[:, c] > 0.5) & (dz_w.abs() > cfg.flip_min_depth)
            f = ok & (dz_w * dz_m < 0)
            flip_bone.append(f)
            bad |= f
        bad &= problem.active & ~result.failed
        for b in torch.nonzero(bad).flatten().tolist():
            P, M, E = lm[b, a], lm[b, m], lm[b, e]
            M2 = flip_point(P, M) if bool(flip_bone[0][b]) else M
            if bool(flip_bone[1][b]):  # the end's depth relative to the middle: the world's sign
                nearer = unit(wcam[b, e] - wcam[b, m])[2] < 0
            else:  # keep the fit's relation
                nearer = (E - M)[2] < 0
            E2 = place_on_ray(M2, E, (E - M).norm(), nearer)
            cands.append((b, li, torch.stack([M2, E2])))
    if not cands:
        return result, flipped
    rows = torch.tensor([c[0] for c in cands], device=model.device)
    start = result.params.index(rows).clone()
    start = _solve_limbs(model, family, cam.index(rows), problem.kp_index, names, start, cands)
    trial = fitter._run_stage(*fitter._subset(problem, rows), start, init.index(rows), stage)
    w = float(cfg.world_flip)
    sub = problem.index(rows)
    wsub = world.prepare(sub)

    def world_energy(params, pb, data):
        from bodyfit.fitting.energy import Evaluation

        if data is None:
            return torch.zeros(len(rows), device=model.device, dtype=model.dtype)
        with torch.no_grad():
            return world(Evaluation(params, params, pb, model, False, None), data)

    e_new = trial.energy + w * world_energy(trial.params, sub, wsub)
    e_old = result.energy[rows] + w * world_energy(result.params.index(rows), sub, wsub)
    take = (e_new < e_old) & torch.isfinite(e_new) & ~trial.failed
    # one candidate per sample: the best among those kept
    best: dict[int, int] = {}
    for i in torch.nonzero(take).flatten().tolist():
        b = cands[i][0]
        if b not in best or float(e_new[i]) < float(e_new[best[b]]):
            best[b] = i
    if best:
        dst = torch.tensor(list(best), device=model.device)
        src = torch.tensor(list(best.values()), device=model.device)
        result = result.put(dst, trial, src)
        for b, i in best.items():
            flipped[b, cands[i][1]] = True
    return result, flipped


def _solve_limbs(model, family, cam, kp_index, names, params, cands, steps: int = 40, lr: float = 0.05):
    """Inverse kinematics: each candidate's limb joints' rotations (the two pose joints of
    :data:`LIMBS`) moved so that its middle and end keypoints reach the targets (camera frame)."""
    n = len(cands)
    joint_names = list(model.pose_joint_names)
    mask = torch.zeros(n, params.body_pose.shape[1], 1, device=params.body_pose.device, dtype=params.body_pose.dtype)
    mids, ends, targets = [], [], []
    for i, (_, li, tgt) in enumerate(cands):
        _, kps, joints = LIMBS[li]
        for j in joints[family]:
            if j in joint_names:
                mask[i, joint_names.index(j)] = 1.0
        mids.append(names.index(kps[1]))
        ends.append(names.index(kps[2]))
        targets.append(tgt)
    targets = torch.stack(targets)  # (n,2,3)
    idx = torch.stack([torch.tensor(mids), torch.tensor(ends)], 1).to(targets.device)  # (n,2)
    base = params.body_pose.detach()
    delta = torch.zeros_like(base, requires_grad=True)
    opt = torch.optim.Adam([delta], lr=lr)
    rows = torch.arange(n, device=targets.device)[:, None]
    for _ in range(steps):
        p = params.clone()
        p.body_pose = base + delta * mask
        lm = cam.to_camera_frame(model(p, vertices=False).joints)[:, kp_index]
        loss = ((lm[rows, idx] - targets) ** 2).sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
    out = params.clone()
    out.body_pose = (base + delta.detach() * mask)
    return out
