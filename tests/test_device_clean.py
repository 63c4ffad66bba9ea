"""Fits run on any device, and their steps leave the host alone: Anny and SMPL run on PyTorch's
``meta`` device (tests/device_probe.py), where a tensor made on the CPU beside the model's
raises as it would on CUDA. Host reads (each a CUDA stream sync) are counted per step of every
stage of the default config; whole fits (one view, calibrated views, sequences) run through
every branch (the trials of other starts and the flags with every sample needing them, and with
none); tests/test_pseudo_gt.py runs pseudo-gt so. The dense energies' rasterizers are not covered
here (they read vertices to the host on the CPU; tests/test_gpu.py checks nvdiffrast on CUDA)."""
import pytest
import torch
from device_probe import MetaProbe
from synthetic_smpl import write_synthetic_smpl

from bodyfit import Fitter, Observations
from bodyfit.body_models import body_model
from bodyfit.data.synthetic import synthetic_batch
from bodyfit.fitting.fitter import stage_weights
from bodyfit.fitting.optimizer import run_stage
from bodyfit.replayable import replayable

# Anny's rest frames come from Newton's polar iteration, which checks whether it has settled
# (from its fourth iteration; the probe answers "settled" at once, CUDA reads twice more), and
# from an SVD only where a frame's determinant is <= 0, checked once: host reads in a step that
# moves the phenotypes. A stage that keeps them reuses the rest skeleton without comparing
# values. SMPL's steps read nothing back; neither do Anny's where host reads are not allowed
# (bodyfit.replayable: a fixed number of polar steps, the reflection computed for every frame).
HOST_READS_PER_STEP = {"anny": 2, "smpl": 0}


def _stage_on_meta(fitter, problem, init, stage, steps):
    """Run ``stage`` for ``steps`` steps on meta under a MetaProbe (one check, at the end)."""
    prepared = {n: e.prepare(problem) for n, e in fitter.energies.items()}
    problem, init = problem.to("meta"), init.to("meta")
    prepared = {n: _to_meta(d) for n, d in prepared.items()}
    weights = stage_weights(stage, prepared)
    energy_fn = fitter.stage_energy(problem, prepared, init, stage)
    probe = MetaProbe()
    with probe:
        result = run_stage(init, energy_fn, free=list(stage.free), weights=weights, steps=steps,
                           lr=stage.lr, optimizer=stage.optimizer, check_every=100,
                           free_pose_joints=fitter.model.free_pose_joints,
                           clamp_shape=fitter.model.clamp_shape, active=problem.active)
    assert result.params.transl.is_meta
    return probe


def _to_meta(x):
    if isinstance(x, torch.Tensor):
        return x.to("meta")
    if isinstance(x, (list, tuple)):
        return type(x)(_to_meta(v) for v in x)
    if isinstance(x, dict):
        return {k: _to_meta(v) for k, v in x.items()}
    return x


def _fitter_on_meta(name, tmp_path):
    """(Fitter, one-view Observations of 3 samples, their Problem and start on the CPU): fitted
    once on the CPU (what is built on first use is built), then the model and the energies
    moved to meta."""
    if name == "anny":
        model = body_model("anny")
    else:
        write_synthetic_smpl(tmp_path / "SMPL_NEUTRAL.npz", "npz")
        model = body_model("smpl", model_path=str(tmp_path / "SMPL_NEUTRAL.npz"))
    sb = synthetic_batch(model, 3, "mediapipe33", generator=torch.Generator().manual_seed(0))
    obs = Observations.from_pictures(sb.keypoints, K=sb.K, boxes=sb.boxes)
    fitter = Fitter(model)
    assert bool(fitter(obs, vertices=False).valid.all())
    problem, init = fitter.problem(obs), fitter._start(obs, None, None)
    model.to("meta")
    for energy in fitter.energies.values():
        energy.to("meta")
    return fitter, obs, problem, init


@pytest.mark.parametrize("name", ["anny", "smpl"])
def test_steps_are_device_clean(name, tmp_path):
    fitter, _, problem, init = _fitter_on_meta(name, tmp_path)
    stages = fitter.config.stages
    assert {"camera", "body"} <= set(stages)
    for stage_name, stage in stages.items():
        _stage_on_meta(fitter, problem, init, stage, steps=1)  # the per-device tables, made once
        two = _stage_on_meta(fitter, problem, init, stage, steps=2)
        four = _stage_on_meta(fitter, problem, init, stage, steps=4)
        reads = (sum(four.reads.values()) - sum(two.reads.values())) / 2
        launches = (sum(four.launches.values()) - sum(two.launches.values())) / 2
        expected = HOST_READS_PER_STEP[name] if "shape" in stage.free else 0
        assert reads == expected, (stage_name, two.reads, four.reads)
        with replayable():  # as in a stage whose steps are captured as CUDA graphs: none
            two = _stage_on_meta(fitter, problem, init, stage, steps=2)
            four = _stage_on_meta(fitter, problem, init, stage, steps=4)
        assert sum(four.reads.values()) == sum(two.reads.values()), (stage_name, two.reads, four.reads)
        assert four.transfers == two.transfers, stage_name  # nor copies from the host
        assert 10 < launches < 1000, (stage_name, launches)


@pytest.mark.parametrize("found", [False, True])
@pytest.mark.parametrize("name", ["anny", "smpl"])
def test_whole_fit_is_device_clean(name, found, tmp_path):
    fitter, obs, _, _ = _fitter_on_meta(name, tmp_path)
    probe = MetaProbe(found=found)
    with probe:
        result = fitter(obs, vertices=False)
    assert result.params.transl.is_meta and result.joints.is_meta
    if found:  # the trials ran: the mirror trial's message, every limb refitted
        assert any(m and "left and right keypoints swapped" in m for m in result.messages)
        assert any(m and "refitted flipped in depth" in m for m in result.messages)


@pytest.mark.parametrize("sequence", [False, True])
def test_views_and_sequences_are_device_clean(anny, sequence):
    """Two calibrated views (and, as a sequence, one shared shape and the temporal energy)."""
    import dataclasses

    from bodyfit.data.synthetic import synthetic_views

    sv = synthetic_views(anny, 3, n_views=2, generator=torch.Generator().manual_seed(0), masks=False,
                         images=False)
    obs = dataclasses.replace(sv.observations, sequence=sequence)
    model = body_model("anny")
    fitter = Fitter(model, overrides=["+stages.body.weights.temporal=1.0"] if sequence else [])
    assert bool(fitter(obs, vertices=False).valid.all())
    model.to("meta")
    for energy in fitter.energies.values():
        energy.to("meta")
    for found in (False, True):
        with MetaProbe(found=found):
            assert fitter(obs, vertices=False).params.transl.is_meta
