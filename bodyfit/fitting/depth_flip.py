"""Per-limb depth-flip trial: where a limb may point the other way in depth, also fit it
flipped and keep the lower energy.

2D keypoints fix each limb's joints up to a two-way choice per bone: a child joint on its camera
ray at the bone's length from its parent lies at one of two depths (the roots of
``|s r - p| = L``). SMPLify settles the whole body's version of this (facing towards or away)
by fitting both and keeping the lower energy (``Fitter``'s 180-degree trial); this does the
same per limb (upper arm + forearm, thigh + shin), after the last stage of a one-view fit:

1. candidates: with ``limb_flip``, each bone (upper or lower) of a limb whose three keypoints
   are seen (confidence > 0.5) and which points out of the picture in the fit (the depth
   component of its unit direction above ``limb_flip_depth``: a bone seen side-on has no
   other depth to take); with ``world_flip`` > 0, each limb whose bones' depth sign disagrees
   with the detector's world landmarks (:mod:`bodyfit.fitting.world_landmarks`; their unit
   direction's depth above ``flip_min_depth``, both ends confident);
2. the flipped joints are moved to the other root along their rays (:func:`flip_point`; the
   end keeps its depth relation to the middle unless its own bone is the one flipped) and the
   limb's two joints' rotations are solved for those points (a few Adam steps of inverse
   kinematics);
3. the last stage runs again from there; a sample keeps its best candidate where that one's
   stage energy (plus ``world_flip`` times the world-landmark energy) is below the fit's and
   its reprojection energy is at most ``limb_flip_reprojection`` times the fit's: a bone's two
   depths fit the keypoints about equally well, and a candidate that fits them clearly worse is
   another pose that the priors prefer, not the other side of the ambiguity.

On Pose2Sim's held-out single views (``benchmarks/bench_pose2sim_depth.py``) the geometric
trigger took the median COCO-17 PA-MPJPE from 46.6 to 44.9 mm (100 views); the world-landmark
trigger alone changed it by 0.0 mm (MediaPipe's bone directions are too often wrong). The
reprojection bound (1.2) changed nothing on the frames it was chosen on (Pose2Sim 5-45) and
took back the trial's cost on random synthetic bodies (fit 49.3 -> 50.0 mm without it, 49.2 with).
"""
from __future__ import annotations

import torch

from bodyfit.body_models.conventions import keypoint_names
from bodyfit.fitting.energy import Evaluation
from bodyfit.fitting.world_landmarks import WorldLandmarksEnergy, unit, view_rotation

#: A candidate is kept only where its energy is below ``1 - FLIP_MARGIN`` times the fit's: one
#: that went back to the fit's own minimum ties with it up to float noise, which differs with the
#: batch's make-up, and a margin keeps the choice the same however the samples are batched.
FLIP_MARGIN = 0.01

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


def limb_flip_trial(fitter, problem, result, init, stage):
    """Run the trial (module docstring) after the last stage.

    Args:
        fitter: the Fitter (its config's ``limb_flip``, ``limb_flip_depth``, ``world_flip`` and
            ``flip_min_depth`` choose the candidates, ``limb_flip_reprojection`` bounds the ones
            kept). problem: its Problem (one view).
        result: the last stage's StageResult (B). init: the start BodyParams (B), which the
            stage's ``init_prior`` measures from. stage: the last StageConfig.
    Returns:
        ``(result, flipped)``: the StageResult with the kept candidates put in, and (B,4) bool,
        the limbs (:data:`LIMBS` order) that were flipped.
    """
    model, cfg = fitter.model, fitter.config
    B = problem.batch_size
    flipped = torch.zeros(B, len(LIMBS), dtype=torch.bool, device=model.device)
    names = keypoint_names(problem.observations.convention)
    if problem.num_views != 1 or not all(n in names for _, kps, _ in LIMBS for n in kps):
        return result, flipped
    cam = problem.cameras[0]
    with torch.no_grad():
        lm = cam.to_camera_frame(model(result.params, vertices=False).joints)[:, problem.kp_index]
    world, wcam = _world_landmarks(fitter, problem, names)
    conf = problem.keypoints[:, 0, :, 2]
    fittable = problem.active & ~result.failed
    cands = {}  # (sample, limb, flip upper, flip lower) -> targets of the middle and end (2,3)
    for li, (_, kps, _) in enumerate(LIMBS):
        a, m, e = (names.index(n) for n in kps)
        seen = (conf[:, a] > 0.5) & (conf[:, m] > 0.5) & (conf[:, e] > 0.5) & fittable
        bones = ((a, m), (m, e))
        fit_dz = [unit(lm[:, c] - lm[:, p])[:, 2] for p, c in bones]
        options = []  # (B,) bool per (flip upper, flip lower)
        if cfg.limb_flip:
            options += [((True, False), seen & (fit_dz[0].abs() > cfg.limb_flip_depth)),
                        ((False, True), seen & (fit_dz[1].abs() > cfg.limb_flip_depth))]
        if wcam is not None:
            disagree = []
            for (p, c), dz_m in zip(bones, fit_dz):
                dz_w = unit(wcam[:, c] - wcam[:, p])[:, 2]
                ok = (wcam[:, p, 3] > 0.5) & (wcam[:, c, 3] > 0.5) & (dz_w.abs() > cfg.flip_min_depth)
                disagree.append(ok & (dz_w * dz_m < 0))
            for fu, fl in ((True, False), (False, True), (True, True)):
                options.append(((fu, fl), fittable & (disagree[0] == fu) & (disagree[1] == fl)))
        for (fu, fl), which in options:
            for b in torch.nonzero(which).flatten().tolist():
                if (b, li, fu, fl) in cands:
                    continue
                P, M, E = lm[b, a], lm[b, m], lm[b, e]
                M2 = flip_point(P, M) if fu else M
                nearer = bool((E - M)[2] < 0) != fl  # the end's depth relative to the middle
                E2 = place_on_ray(M2, E, (E - M).norm(), torch.tensor(nearer, device=E.device))
                cands[(b, li, fu, fl)] = torch.stack([M2, E2])
    if not cands:
        return result, flipped
    keys = list(cands)
    rows = torch.tensor([k[0] for k in keys], device=model.device)
    family = "anny" if model.name == "anny" else "smpl"
    start = _solve_limbs(model, family, cam.index(rows), problem.kp_index, names,
                         result.params.index(rows).clone(), [(k[1], cands[k]) for k in keys])
    trial = fitter._run_stage(*fitter._subset(problem, rows), start, init.index(rows), stage)
    e_new, e_old = trial.energy, result.energy[rows]
    if world is not None and cfg.world_flip > 0:
        sub = problem.index(rows)
        data = world.prepare(sub)
        e_new = e_new + cfg.world_flip * _energy(world, data, trial.params, sub, model)
        e_old = e_old + cfg.world_flip * _energy(world, data, result.params.index(rows), sub, model)
    take = (e_new < (1.0 - FLIP_MARGIN) * e_old) & torch.isfinite(e_new) & ~trial.failed
    if "reprojection" in trial.terms:  # the other depth fits the keypoints about as well
        take &= trial.terms["reprojection"] <= cfg.limb_flip_reprojection * result.terms["reprojection"][rows]
    best: dict[int, int] = {}  # one candidate per sample: the lowest energy among those kept
    for i in torch.nonzero(take).flatten().tolist():
        b = keys[i][0]
        if b not in best or float(e_new[i]) < float(e_new[best[b]]):
            best[b] = i
    if best:
        dst = torch.tensor(list(best), device=model.device)
        src = torch.tensor(list(best.values()), device=model.device)
        result = result.put(dst, trial, src)
        for b, i in best.items():
            flipped[b, keys[i][1]] = True
    return result, flipped


def _world_landmarks(fitter, problem, names):
    """``(energy, landmarks)``: the world-landmark energy and the detector's world landmarks
    turned into the camera frame ((B,K,4), confidence last), where ``world_flip`` > 0 and the
    observations have them; else ``(None, None)``."""
    model, cfg = fitter.model, fitter.config
    if cfg.world_flip <= 0:
        return None, None
    world = fitter.energies.get("world_landmarks")  # the stage's own where it weighs the term
    world = WorldLandmarksEnergy(model, cfg) if world is None else world
    if world.prepare(problem) is None:
        return None, None
    wk = problem.observations.clean_world_keypoints()[:, 0].to(model.device, model.dtype)  # (B,K,4)
    hips = (names.index("left_hip"), names.index("right_hip"))
    Rv = view_rotation(problem.keypoints[:, 0], problem.cameras[0].K,
                       "camera" if cfg.world_frame == "camera" else "ray", hips)
    return world, torch.cat([torch.einsum("bij,bkj->bki", Rv, wk[..., :3]), wk[..., 3:]], -1)


@torch.no_grad()
def _energy(world, data, params, problem, model):
    """The world-landmark energy (n,) of ``params``; zeros where there are no landmarks."""
    if data is None:
        return torch.zeros(problem.batch_size, device=model.device, dtype=model.dtype)
    return world(Evaluation(params, params, problem, model, False, None), data)


def _solve_limbs(model, family, cam, kp_index, names, params, cands, steps: int = 40, lr: float = 0.05):
    """Inverse kinematics: each candidate's limb joints' rotations (the two pose joints of
    :data:`LIMBS`) moved so that its middle and end keypoints reach the targets (camera frame).
    ``cands``: one (limb index, (2,3) targets) per row of ``params``."""
    n = len(cands)
    joint_names = list(model.pose_joint_names)
    mask = torch.zeros(n, params.body_pose.shape[1], 1, device=params.body_pose.device, dtype=params.body_pose.dtype)
    mids, ends, targets = [], [], []
    for i, (li, tgt) in enumerate(cands):
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
