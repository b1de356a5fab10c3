"""The learned shift estimator: shipped weights without JAX/PyTorch, known shifts on held-out
frames, low quality for featureless input, the training smoke test, the aligner setting."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from livetomo.plans.tilt_order import tilt_order
from livetomo.processing.register import register
from livetomo.processing.shift_net import (
    ShiftNet,
    choose_bin,
    learned_register,
    load_shift_net,
    predict_patches,
)
from livetomo.processing.streaming_align import StreamingAlignmentError, StreamingTiltAligner
from livetomo.simulators.k3 import K3Camera, make_specimen
from livetomo.simulators.stages import TiltStageModel

# Stated accuracy of the shipped weights on the held-out pairs below (128² frames, 2 nm
# pixels, 3 e/Å², a lamella family and seeds that training never saw): RMS over the pairs.
HELD_OUT_RMS_PX = 0.12


def _camera(family="filaments", seed=5, thickness=200.0, size=128, pixel_A=20.0):
    ny = int(np.ceil(thickness / 2.0 / 0.9))
    vox = int(np.ceil(size * pixel_A / 20.0))
    potential = make_specimen(family, (vox, ny, vox), thickness_nm=thickness, seed=seed)
    return K3Camera(
        potential, voxel_size_nm=2.0, pixel_size_A=pixel_A, image_shape=(size, size), seed=seed + 1
    )


@pytest.fixture(scope="module")
def held_out_pairs():
    """(reference, moving, true registering shift) at several tilts, sub-pixel shifts."""
    cam = _camera()
    rng = np.random.default_rng(42)
    pairs = []
    for tilt in (-60.0, -30.0, 0.0, 20.0, 45.0, 66.0):
        d0, d1 = rng.uniform(-3, 3, 2), rng.uniform(-3, 3, 2)
        a = cam.acquire(tilt, dose_e_per_A2=3.0, shift_px=tuple(d0)).counts.astype(np.float32)
        b = cam.acquire(tilt, dose_e_per_A2=3.0, shift_px=tuple(d1)).counts.astype(np.float32)
        pairs.append((a, b, -(d1 - d0)))
    return pairs


def test_shipped_weights_load_and_predict_without_jax_or_torch(tmp_path):
    script = (
        "import sys\n"
        "class Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] in ('jax', 'jaxlib', 'torch', 'onnxruntime'):\n"
        "            raise ImportError('blocked: ' + name)\n"
        "sys.meta_path.insert(0, Block())\n"
        "import numpy as np\n"
        "from livetomo.processing.shift_net import learned_register, load_shift_net\n"
        "from scipy import ndimage\n"
        "net = load_shift_net()\n"
        "rng = np.random.default_rng(0)\n"
        "img = ndimage.gaussian_filter(rng.normal(size=(128, 128)), 2.0)\n"
        "mov = ndimage.shift(img, (1.3, -2.6), mode='wrap')\n"
        "r = learned_register(img, mov)\n"
        "assert not {'jax', 'torch', 'onnxruntime'} & set(sys.modules)\n"
        "print(list(r.shift), r.quality.ok, net.record['steps'])\n"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=dict(os.environ))
    assert out.returncode == 0, out.stderr
    line = out.stdout.strip().replace("[", "").replace("]", "").replace(",", "").split()
    dy, dx, ok, steps = float(line[0]), float(line[1]), line[2], int(line[3])
    assert ok == "True" and steps > 0
    assert abs(dy + 1.3) < 0.1 and abs(dx - 2.6) < 0.1


def test_shipped_record_says_how_the_weights_were_made():
    net = load_shift_net()
    rec = net.record
    assert rec["config"]["seed"] == 0 and rec["steps"] == rec["config"]["steps"]
    assert rec["data"]["training_lamella_seeds"][0] >= 1000  # held-out data uses seeds < 1000
    assert rec["config"]["family"] == "particles"  # the 'filaments' family is held out
    assert rec["train_time_s"] > 0 and np.isfinite(rec["final_loss"]["mse_px2"])
    assert 0 < rec["weights_bytes"] < 1_000_000
    assert all(0.5 <= c <= 4.0 for c in net.calibration)


def test_learned_register_recovers_known_shifts_on_held_out_frames(held_out_pairs):
    err, err_xc, unc = [], [], []
    for a, b, truth in held_out_pairs:
        r = learned_register(a, b)
        assert r.quality.ok
        err.append(np.asarray(r.shift) - truth)
        unc.append(r.quality.uncertainty_px)
        err_xc.append(np.asarray(register(a, b).shift) - truth)
    err, unc = np.asarray(err), np.asarray(unc)
    rms = float(np.sqrt(np.mean(np.sum(err**2, axis=1))))
    assert rms < HELD_OUT_RMS_PX, rms
    # The uncertainty is not over-confident by more than a small factor.
    assert np.all(np.abs(err) < 5 * unc + 0.05)


def test_same_shift_whatever_the_sign_convention_says(held_out_pairs):
    a, b, truth = held_out_pairs[2]
    forward = np.asarray(learned_register(a, b).shift)
    backward = np.asarray(learned_register(b, a).shift)
    assert np.allclose(forward, -backward, atol=0.1)
    assert np.allclose(forward, truth, atol=0.15)


def test_large_frames_are_binned_to_the_band_of_their_signal():
    fine = _camera(size=256, pixel_A=5.0)  # 0.5 nm pixels: the phantom's 2 nm detail fills a quarter band
    a = fine.acquire(0.0, dose_e_per_A2=3.0).counts
    assert choose_bin(a) == 2  # 256 px: binning 4 would leave fewer than 128 px
    coarse = _camera(size=128)
    assert choose_bin(coarse.acquire(0.0, dose_e_per_A2=3.0).counts) == 1
    b = fine.acquire(0.0, dose_e_per_A2=3.0, shift_px=(2.4, -5.2)).counts
    r = learned_register(a, b)
    assert r.quality.ok
    assert np.allclose(r.shift, (-2.4, 5.2), atol=0.3)


def test_featureless_input_gets_low_quality_not_a_confident_shift():
    flat = np.full((128, 128), 500.0, np.float32)
    r = learned_register(flat, flat)
    assert not r.quality.ok and np.isinf(r.quality.uncertainty_px).all()
    rng = np.random.default_rng(3)
    # Counting noise of a flat field: no specimen, nothing to align.
    a = rng.poisson(400.0, (128, 128)).astype(np.float32)
    b = rng.poisson(400.0, (128, 128)).astype(np.float32)
    r = learned_register(a, b)
    assert not r.quality.ok, r.quality
    assert np.isinf(r.quality.uncertainty_px).all()
    assert r.quality.score < 1.6


def test_bad_input_is_refused():
    with pytest.raises(ValueError):
        learned_register(np.zeros((64, 64)), np.zeros((64, 32)))
    with pytest.raises(ValueError):
        learned_register(np.full((64, 64), np.nan), np.zeros((64, 64)))


def test_weights_round_trip(tmp_path):
    net = load_shift_net()
    net.save(tmp_path / "w.npz")
    with np.load(tmp_path / "w.npz") as f:
        again = ShiftNet.from_arrays({k: f[k] for k in f.files})
    rng = np.random.default_rng(1)
    x = rng.normal(size=(2, 64, 64)).astype(np.float32)
    y = np.roll(x, (1, -2), axis=(1, 2))
    lag1, sig1, _ = predict_patches(net, x, y)
    lag2, sig2, _ = predict_patches(again, x, y)
    assert np.allclose(lag1, lag2) and np.allclose(sig1, sig2)
    assert np.allclose(lag1, [[1, -2], [1, -2]], atol=0.1)


# ----------------------------------------------------------------------------- the aligner setting


def _series(seed=7, max_tilt=40.0, size=96):
    cam = _camera(family="particles", seed=seed, thickness=150.0, size=size)  # held-out seed
    stage = TiltStageModel(eucentric_error_nm=20.0, seed=seed + 2)
    tilts, frames, truth = [], [], []
    for tilt in tilt_order(-max_tilt, max_tilt, 4.0, order="dose-symmetric"):
        stage.move(tilt)
        f = cam.acquire(tilt, dose_e_per_A2=3.0, shift_px=tuple(stage.true_offset_nm / 2.0))
        tilts.append(tilt)
        frames.append(f.counts)
        truth.append(f.true_shift_px)
    return np.asarray(tilts), np.asarray(frames), np.asarray(truth)


def _drift_error(shifts, truth, tilts):
    e = np.asarray(shifts) + np.asarray(truth)
    t = np.deg2rad(tilts)
    basis = np.stack([np.ones_like(t), np.cos(t), np.sin(t)], 1)
    coef, *_ = np.linalg.lstsq(basis, e[:, 1], rcond=None)
    return float(np.sqrt(np.mean((e[:, 0] - e[:, 0].mean()) ** 2) + np.mean((e[:, 1] - basis @ coef) ** 2)))


def test_tilt_aligner_estimator_setting():
    tilts, frames, truth = _series()
    errors = {}
    for estimator in ("xcorr", "learned", "auto"):
        aligner = StreamingTiltAligner(estimator=estimator)
        results = [aligner.add(f, t) for f, t in zip(frames, tilts, strict=True)]
        assert np.mean([r.quality.ok for r in results[1:]]) >= 0.9
        errors[estimator] = _drift_error(aligner.shifts, truth, tilts)
        json.dumps(results[3].as_dict())
        if estimator == "auto":
            assert sum(aligner.estimator_counts.values()) >= len(tilts) - 1
    assert max(errors.values()) < 0.5, errors
    with pytest.raises(StreamingAlignmentError):
        StreamingTiltAligner(estimator="magic")


def test_refine_on_binned_frames_keeps_the_alignment():
    tilts, frames, truth = _series(seed=8, max_tilt=32.0, size=128)
    aligner = StreamingTiltAligner(thickness_px=75, refine_bin=2, reproject_iterations=2)
    for f, t in zip(frames, tilts, strict=True):
        aligner.add(f, t)
    before = _drift_error(aligner.shifts, truth, tilts)
    after = _drift_error(aligner.refine(), truth, tilts)
    assert after < max(0.3, 1.5 * before), (before, after)


# ----------------------------------------------------------------------------- training (train extra)


def test_training_smoke_run_makes_loadable_weights(tmp_path):
    pytest.importorskip("jax")
    from livetomo.daemon.training import save, train_shift_net

    net, record = train_shift_net(
        0, log=lambda *a: None, steps=6, batch=4, n_lamellae=2, views_per_lamella=2,
        validation_lamellae=1, validation_pairs=8, log_every=3,
    )  # fmt: skip
    assert record["steps"] == 6 and len(record["history"]) == 2
    assert np.isfinite(record["history"][-1]["loss"])
    weights, rec_path = save(net, record, tmp_path)
    loaded = json.loads(rec_path.read_text())
    assert loaded["weights_bytes"] == weights.stat().st_size
    with np.load(weights) as f:
        again = ShiftNet.from_arrays({k: f[k] for k in f.files})
    rng = np.random.default_rng(0)
    a = rng.normal(size=(96, 96)).astype(np.float32)
    r = learned_register(a, np.roll(a, 1, axis=0), net=again)
    assert np.all(np.isfinite(r.shift))


def test_numpy_inference_matches_the_jax_model():
    jax = pytest.importorskip("jax")
    import jax.numpy as jnp

    from livetomo.daemon.training import _model, _numpy_net, init_params

    params = init_params(3)
    rng = np.random.default_rng(2)
    params["conv2_w"] += rng.normal(0, 0.2, params["conv2_w"].shape).astype(np.float32)
    forward, _ = _model(jnp, jax)
    ref = rng.normal(size=(4, 64, 64)).astype(np.float32)
    mov = np.roll(ref, (1, 2), axis=(1, 2)) + rng.normal(0, 0.5, ref.shape).astype(np.float32)
    lag_j, logvar_j, *_ = forward(
        {k: jnp.asarray(v) for k, v in params.items()}, jnp.asarray(ref), jnp.asarray(mov),
        jnp.zeros((4, 2), jnp.int32),
    )  # fmt: skip
    lag_n, sigma_n, _ = predict_patches(_numpy_net(params), ref, mov)
    assert np.allclose(np.asarray(lag_j), lag_n, atol=1e-4)
    assert np.allclose(np.exp(0.5 * np.asarray(logvar_j)), sigma_n, rtol=1e-4)


def test_train_command_parses():
    import argparse

    from livetomo.daemon.cli._train import add_parser, run_train

    parser = argparse.ArgumentParser()
    add_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["train", "shift-net", "--seed", "3", "--steps", "10", "--out", "x"])
    assert (args.seed, args.steps, args.out, args.func) == (3, 10, "x", run_train)
