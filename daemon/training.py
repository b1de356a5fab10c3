"""Training of the learned shift estimator (``livetomo train shift-net``; the ``train`` extra).

The source's recipe (cryo-ET CNN Φθ): synthetic image pairs with known sub-pixel shifts
and Poisson noise at the dose, mean-squared error of the predicted shift. Here:

- **data**: clean K3 images from the simulators (``simulators.k3``: lamellae of the
  'particles' family with training seeds only — ``TRAIN_SEED_BASE`` and up; benchmarks and
  tests use seeds below 1000 and the 'filaments' family, which training never sees),
  thickness 100-300 nm, object density 0.6-1.5x, defocus -1.5 to -5 µm, B-factor
  100-300 Å², pixel size 12-20 Å, tilts to ±70°; each pair is one view shifted against
  itself (the source's pairs). ``same_view_fraction < 1`` also draws two views 2-3° apart,
  the higher tilt cosine-stretched onto the lower as the aligner does; the shipped weights
  do not (their features' parallax made the labels noisy and the network shrank shifts
  towards zero: docs/alignment.md);
- **augmentation** on every draw: a new sub-pixel shift (uniform ±2.5 px, a band-limited
  Fourier translation), new Poisson noise at a dose drawn log-uniformly in 1-15 e/Å²,
  random crop, flips of either axis (and so 180° turns);
- **loss**: MSE of the shift (pixels²), plus two auxiliary terms: a cross-entropy that
  makes the correlation of the learned features peak at the true integer lag (the feature
  layers learn to suppress noise peaks), and a Gaussian negative log-likelihood that
  trains the uncertainty outputs on the (detached) shift errors;
- **optimiser**: Adam with a cosine-decayed step, gradient clipping; JAX (CPU wheels are
  small; on a machine with JAX's CUDA wheels the same code runs on the GPU);
- **after training**: the predicted standard deviations are calibrated on validation pairs
  from other lamellae (numpy inference path, exactly what ships), and the validation error
  is compared with livetomo's ``register`` on the same pairs.

:func:`train_shift_net` returns the numpy :class:`~livetomo.processing.shift_net.ShiftNet`
and the record; :func:`save` writes ``shift_net.npz`` + ``shift_net.json``.
"""

from __future__ import annotations

import json
import math
import platform
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import scipy.fft as sfft
from scipy import ndimage

from ..processing.register import register
from ..processing.shift_net import (
    HALF_WINDOW,
    LAYERS,
    LOGVAR_RANGE,
    PATCH,
    PATCH_SEARCH,
    RECORD_FILE,
    WEIGHTS_FILE,
    ShiftNet,
    predict_patches,
)
from ..processing.tilt_align import stretch_columns
from ..simulators.k3 import K3Camera, make_specimen

TRAIN_SEED_BASE = 1000  # lamella seeds of the training data; held-out data uses seeds < 1000
VALIDATION_SEED_BASE = 900_000
VIEW = 96  # px, the clean images from which patches are cut


class TrainingUnavailable(RuntimeError):
    """JAX (the ``train`` extra) is not installed."""


@dataclass
class TrainConfig:
    """Everything that decides the weights (written into the record)."""

    seed: int = 0
    steps: int = 3000
    batch: int = 32
    learning_rate: float = 2e-3
    final_learning_rate: float = 1e-4
    clip_norm: float = 5.0
    ce_weight: float = 0.05
    nll_weight: float = 0.1
    n_lamellae: int = 40
    views_per_lamella: int = 12
    validation_lamellae: int = 6
    validation_pairs: int = 512
    family: str = "particles"
    thickness_nm: tuple[float, float] = (100.0, 300.0)
    density: tuple[float, float] = (0.6, 1.5)
    defocus_um: tuple[float, float] = (-5.0, -1.5)
    bfactor_A2: tuple[float, float] = (100.0, 300.0)
    pixel_size_A: tuple[float, float] = (12.0, 20.0)
    max_tilt_deg: float = 70.0
    same_view_fraction: float = 1.0
    neighbour_steps_deg: tuple[float, ...] = (2.0, 3.0)
    dose_e_per_A2: tuple[float, float] = (1.0, 15.0)
    max_shift_px: float = 2.5
    validation_max_shift_px: float = 1.0  # residual after the coarse stage of learned_register
    log_every: int = 250
    extra: dict = field(default_factory=dict)


# --------------------------------------------------------------------------- data


@dataclass
class ViewPair:
    """Two clean views of one lamella: relative intensity (transmission × (1 + contrast)),
    (VIEW, VIEW) float32 each, at ``tilts`` (a, b), ``pixel_size_A``."""

    a: np.ndarray
    b: np.ndarray
    tilts: tuple[float, float]
    pixel_size_A: float


def make_view_pairs(seed_base: int, n_lamellae: int, views: int, cfg: TrainConfig, rng, log=None):
    """Clean view pairs from ``n_lamellae`` simulated lamellae (seeds ``seed_base + i``)."""
    pairs = []
    t0 = time.perf_counter()
    for i in range(n_lamellae):
        thickness = rng.uniform(*cfg.thickness_nm)
        ny = int(math.ceil(thickness / 2.0 / 0.9))
        pixel = rng.uniform(*cfg.pixel_size_A)
        lateral = int(math.ceil(VIEW * pixel / 20.0)) + 8
        potential = make_specimen(
            cfg.family, (lateral, ny, lateral), voxel_size_nm=2.0, thickness_nm=thickness,
            density=rng.uniform(*cfg.density), seed=seed_base + i,
        )  # fmt: skip
        camera = K3Camera(potential, voxel_size_nm=2.0, pixel_size_A=pixel, image_shape=(VIEW, VIEW))
        unit = 1.0 / pixel**2  # dose giving the relative intensity
        for _ in range(views):
            alpha = rng.uniform(-cfg.max_tilt_deg, cfg.max_tilt_deg)
            if rng.random() < cfg.same_view_fraction:
                beta = alpha
            else:
                step = rng.choice(cfg.neighbour_steps_deg) * rng.choice((-1.0, 1.0))
                beta = alpha + step if abs(alpha + step) <= cfg.max_tilt_deg else alpha - step
            optics = {"defocus_um": rng.uniform(*cfg.defocus_um), "bfactor_A2": rng.uniform(*cfg.bfactor_A2)}
            a = camera.expected_image(alpha, unit, **optics).astype(np.float32)
            b = a if beta == alpha else camera.expected_image(beta, unit, **optics).astype(np.float32)
            pairs.append(ViewPair(a, b, (float(alpha), float(beta)), float(pixel)))
        if log and (i + 1) % max(1, n_lamellae // 4) == 0:
            log(f"  simulated {i + 1}/{n_lamellae} lamellae ({time.perf_counter() - t0:.0f} s)")
    return pairs


def _fourier_translate(image: np.ndarray, d) -> np.ndarray:
    """``ndimage.shift(image, d)`` as a band-limited (Fourier) translation, float32."""
    spec = ndimage.fourier_shift(sfft.fft2(image), d)
    return sfft.ifft2(spec).real.astype(np.float32)


def draw_pair(pair: ViewPair, cfg: TrainConfig, rng):
    """One training sample: (reference patch, moving patch, displacement (dy, dx)).

    The moving view is displaced by d (``moving(x) = view(x - d)``), both get Poisson noise
    at a random dose, the higher tilt is cosine-stretched onto the lower (as
    ``StreamingTiltAligner`` does, so the displacement in the stretched frame is
    ``(dy, dx / f)``), then a random crop and flips.
    """
    d = rng.uniform(-cfg.max_shift_px, cfg.max_shift_px, 2)
    dose = math.exp(rng.uniform(math.log(cfg.dose_e_per_A2[0]), math.log(cfg.dose_e_per_A2[1])))
    scale = dose * pair.pixel_size_A**2
    ref = rng.poisson(scale * np.maximum(pair.a, 0.0)).astype(np.float32)
    mov = rng.poisson(scale * np.maximum(_fourier_translate(pair.b, d), 0.0)).astype(np.float32)
    ta, tb = pair.tilts
    target = d.copy()
    if abs(tb) >= abs(ta):
        f = math.cos(math.radians(tb)) / math.cos(math.radians(ta))
        if f != 1.0:
            mov = stretch_columns(mov, f)
            target[1] = d[1] / f
    else:
        ref = stretch_columns(ref, math.cos(math.radians(ta)) / math.cos(math.radians(tb)))
    margin = int(math.ceil(cfg.max_shift_px)) + 2
    y0, x0 = rng.integers(margin, VIEW - PATCH - margin + 1, 2)
    ref = ref[y0 : y0 + PATCH, x0 : x0 + PATCH]
    mov = mov[y0 : y0 + PATCH, x0 : x0 + PATCH]
    if rng.random() < 0.5:
        ref, mov, target[0] = ref[::-1], mov[::-1], -target[0]
    if rng.random() < 0.5:
        ref, mov, target[1] = ref[:, ::-1], mov[:, ::-1], -target[1]
    return np.ascontiguousarray(ref), np.ascontiguousarray(mov), target.astype(np.float32)


def draw_batch(pairs, cfg: TrainConfig, rng, n: int):
    idx = rng.integers(0, len(pairs), n)
    samples = [draw_pair(pairs[k], cfg, rng) for k in idx]
    return tuple(np.stack(x) for x in zip(*samples, strict=True))


# --------------------------------------------------------------------------- model (JAX)


def _jax():
    try:
        import jax
        import jax.numpy as jnp
    except ImportError as err:  # pragma: no cover - exercised where the extra is absent
        raise TrainingUnavailable(
            "training needs JAX: python -m pip install -e '.[train]' (CPU wheels; CUDA wheels for a GPU)"
        ) from err
    return jax, jnp


def init_params(seed: int) -> dict:
    """He-initialised weights (numpy, float32), deterministic under ``seed``."""
    rng = np.random.default_rng(seed)
    n_head = (2 * HALF_WINDOW + 1) ** 2 + 2
    shapes = {
        "conv1": ((8, 1, 3, 3), 9),
        "conv2": ((8, 8, 3, 3), 72),
        "conv3": ((4, 8, 3, 3), 72),
        "head1": ((n_head, 32), n_head),
        "head2": ((32, 32), 32),
        "head3": ((32, 4), 32),
    }
    params = {}
    for name, (shape, fan_in) in shapes.items():
        w = rng.normal(0.0, math.sqrt(2.0 / fan_in), shape).astype(np.float32)
        if name == "head3":
            w *= 0.1
        bias = np.zeros(shape[0] if name.startswith("conv") else shape[1], np.float32)
        params[f"{name}_w"], params[f"{name}_b"] = w, bias
    # Start from plain cross-correlation: channel 0 carries the image through
    # (relu(x) - relu(-x) = x), the other channels start small; training learns from there.
    for name in ("conv1", "conv2", "conv3"):
        params[f"{name}_w"] *= 0.1
    params["conv1_w"][0, 0, 1, 1] += 1.0
    params["conv1_w"][1, 0, 1, 1] -= 1.0
    params["conv2_w"][0, 0, 1, 1] += 1.0
    params["conv2_w"][1, 1, 1, 1] += 1.0
    params["conv3_w"][0, 0, 1, 1] += 1.0
    params["conv3_w"][0, 1, 1, 1] -= 1.0
    params["log_beta"] = np.float32(math.log(4.0))
    return params


def _model(jnp, jax):
    """Pure JAX functions mirroring :mod:`livetomo.processing.shift_net` exactly."""
    lax = jax.lax

    def conv(x, w, b):
        y = lax.conv_general_dilated(x, w, (1, 1), "VALID", dimension_numbers=("NCHW", "OIHW", "NCHW"))
        return y + b[None, :, None, None]

    def standardise(a):
        a = a - a.mean(axis=(-2, -1), keepdims=True)
        return a / jnp.maximum(a.std(axis=(-2, -1), keepdims=True), 1e-12)

    def features(p, x):
        x = x[:, None]
        x = jax.nn.relu(conv(x, p["conv1_w"], p["conv1_b"]))
        x = jax.nn.relu(conv(x, p["conv2_w"], p["conv2_b"]))
        return conv(x, p["conv3_w"], p["conv3_b"])

    def hann(n):
        return 0.5 - 0.5 * jnp.cos(2.0 * jnp.pi * (jnp.arange(n) + 0.5) / n)

    def correlate(fa, fb):
        h, w = fa.shape[-2:]
        win = hann(h)[:, None] * hann(w)[None, :]
        a, b = fa * win, fb * win
        spec = jnp.conj(jnp.fft.rfft2(a)) * jnp.fft.rfft2(b)
        corr = jnp.fft.irfft2(spec.sum(axis=1), s=(h, w))
        norm = jnp.sqrt((a * a).sum(axis=(1, 2, 3)) * (b * b).sum(axis=(1, 2, 3)))
        return corr / jnp.maximum(norm, 1e-30)[:, None, None]

    def signed(i, n):
        return (i + n // 2) % n - n // 2

    def forward(p, ref, mov, centre):
        """Lags (n, 2), log-variances (n, 2), the surfaces and their stats."""
        n = ref.shape[0]
        feats = features(p, jnp.concatenate([standardise(ref), standardise(mov)]))
        corr = correlate(feats[:n], feats[n:])
        _, h, w = corr.shape
        r = jnp.arange(-PATCH_SEARCH, PATCH_SEARCH + 1)
        yy = (centre[:, 0:1] + r[None, :]) % h
        xx = (centre[:, 1:2] + r[None, :]) % w
        rows = jnp.arange(n)[:, None, None]
        local = lax.stop_gradient(corr)[rows, yy[:, :, None], xx[:, None, :]].reshape(n, -1)
        k = jnp.argmax(local, axis=1)
        iy = centre[:, 0] + r[k // r.size]
        ix = centre[:, 1] + r[k % r.size]
        # head inputs (processing.shift_net.head_inputs)
        ly = signed(jnp.arange(h)[None, :] - iy[:, None], h)
        lx = signed(jnp.arange(w)[None, :] - ix[:, None], w)
        outside = ~((jnp.abs(ly)[:, :, None] <= 3) & (jnp.abs(lx)[:, None, :] <= 3))
        cnt = jnp.maximum(outside.sum(axis=(1, 2)), 1)
        mean = jnp.where(outside, corr, 0.0).sum(axis=(1, 2)) / cnt
        var = jnp.where(outside, (corr - mean[:, None, None]) ** 2, 0.0).sum(axis=(1, 2)) / cnt
        std = jnp.sqrt(jnp.maximum(var, 1e-20))
        rw = jnp.arange(-HALF_WINDOW, HALF_WINDOW + 1)
        wy = (iy[:, None] + rw[None, :]) % h
        wx = (ix[:, None] + rw[None, :]) % w
        win = corr[rows, wy[:, :, None], wx[:, None, :]]
        peak = corr[jnp.arange(n), iy % h, ix % w]
        scaled = (win - mean[:, None, None]) / jnp.maximum(peak - mean, 1e-6)[:, None, None]
        psr = (peak - mean) / std
        inputs = jnp.concatenate(
            [scaled.reshape(n, -1), jnp.stack([peak, jnp.log(jnp.maximum(psr, 1.0))], 1)], 1
        )
        hid = jax.nn.relu(inputs @ p["head1_w"] + p["head1_b"])
        hid = jax.nn.relu(hid @ p["head2_w"] + p["head2_b"])
        out = hid @ p["head3_w"] + p["head3_b"]
        lag = jnp.stack([signed(iy, h), signed(ix, w)], 1) + out[:, :2]
        logvar = jnp.clip(out[:, 2:4], *LOGVAR_RANGE)
        return lag, logvar, corr, mean, std

    def loss_fn(p, ref, mov, target, weights):
        centre = jnp.round(target).astype(jnp.int32)
        lag, logvar, corr, mean, std = forward(p, ref, mov, centre)
        err = lag - target
        mse = jnp.mean(err**2)
        # cross-entropy of the correlation surface against the bilinear true lag
        _, h, w = corr.shape
        logits = jnp.exp(p["log_beta"]) * (corr - mean[:, None, None]) / std[:, None, None]
        logp = jax.nn.log_softmax(logits.reshape(logits.shape[0], -1), axis=1).reshape(corr.shape)
        fy, fx = jnp.floor(target[:, 0]), jnp.floor(target[:, 1])
        ty, tx = target[:, 0] - fy, target[:, 1] - fx
        n = corr.shape[0]
        ce = 0.0
        for oy, ox, wgt in ((0, 0, (1 - ty) * (1 - tx)), (1, 0, ty * (1 - tx)), (0, 1, (1 - ty) * tx),
                            (1, 1, ty * tx)):  # fmt: skip
            yy = (fy.astype(jnp.int32) + oy) % h
            xx = (fx.astype(jnp.int32) + ox) % w
            ce = ce - wgt * logp[jnp.arange(n), yy, xx]
        ce = jnp.mean(ce)
        e2 = lax.stop_gradient(err) ** 2
        nll = jnp.mean(0.5 * (logvar + e2 * jnp.exp(-logvar)))
        total = mse + weights[0] * ce + weights[1] * nll
        return total, (mse, ce, nll)

    return forward, loss_fn


# --------------------------------------------------------------------------- training


def _numpy_net(params: dict, calibration=(1.0, 1.0), record=None) -> ShiftNet:
    arrays = {k: np.asarray(v, dtype=np.float32) for k, v in params.items() if k != "log_beta"}
    arrays["beta"] = np.float32(math.exp(float(params["log_beta"])))
    arrays["calibration"] = np.asarray(calibration, np.float32)
    return ShiftNet.from_arrays(arrays, record)


def evaluate(net: ShiftNet, batch) -> dict:
    """Numpy-path errors of the network and of ``register`` on (ref, mov, target) patches."""
    ref, mov, target = batch
    lag, sigma, _ = predict_patches(net, ref, mov)
    err = lag - target
    xc = []
    for r, m in zip(ref, mov, strict=True):
        xc.append(-np.asarray(register(r, m).shift))  # register returns the registering shift
    xc_err = np.asarray(xc) - target
    return {
        "rms_error_px": float(np.sqrt(np.mean(np.sum(err**2, axis=1)))),
        "rms_error_xy_px": [float(v) for v in np.sqrt(np.mean(err**2, axis=0))],
        "median_abs_error_px": float(np.median(np.abs(err))),
        "register_rms_error_px": float(np.sqrt(np.mean(np.sum(xc_err**2, axis=1)))),
        "register_median_abs_error_px": float(np.median(np.abs(xc_err))),
        "z": (err / sigma),
    }


def train_shift_net(seed: int = 0, *, log=print, **overrides) -> tuple[ShiftNet, dict]:
    """Train the shift network; deterministic under ``seed`` on one machine.

    Parameters
    ----------
    seed : decides the lamellae drawn (seeds ``TRAIN_SEED_BASE + 1000 seed + i``), the
        samples and the initial weights.
    log : progress printer.
    overrides : fields of :class:`TrainConfig` (``steps``, ``n_lamellae``, ...).

    Returns
    -------
    net : the trained, calibrated :class:`~livetomo.processing.shift_net.ShiftNet` (numpy).
    record : JSON-ready dict of how it was made (config, data, steps, time, losses,
        validation errors against ``register``).
    """
    jax, jnp = _jax()
    cfg = TrainConfig(seed=seed, **overrides)
    t_start = time.perf_counter()
    rng = np.random.default_rng(seed)
    log(f"shift-net training, seed {seed}: simulating {cfg.n_lamellae} training lamellae")
    pairs = make_view_pairs(
        TRAIN_SEED_BASE + 1000 * seed, cfg.n_lamellae, cfg.views_per_lamella, cfg, rng, log
    )
    val_rng = np.random.default_rng(seed + 7919)
    val_pairs = make_view_pairs(
        VALIDATION_SEED_BASE + 1000 * seed, cfg.validation_lamellae, cfg.views_per_lamella, cfg, val_rng
    )
    t_data = time.perf_counter() - t_start
    _, loss_fn = _model(jnp, jax)
    params = {k: jnp.asarray(v) for k, v in init_params(seed).items()}
    moments = (
        {k: jnp.zeros_like(v) for k, v in params.items()},
        {k: jnp.zeros_like(v) for k, v in params.items()},
    )
    weights = jnp.asarray([cfg.ce_weight, cfg.nll_weight], dtype=jnp.float32)

    @jax.jit
    def step(params, moments, t, lr, ref, mov, target):
        (total, parts), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, ref, mov, target, weights)
        gnorm = jnp.sqrt(sum(jnp.sum(g * g) for g in jax.tree_util.tree_leaves(grads)))
        scale = jnp.minimum(1.0, cfg.clip_norm / (gnorm + 1e-12))
        m, v = moments
        b1, b2 = 0.9, 0.999
        m = {k: b1 * m[k] + (1 - b1) * grads[k] * scale for k in params}
        v = {k: b2 * v[k] + (1 - b2) * (grads[k] * scale) ** 2 for k in params}
        mhat = {k: m[k] / (1 - b1**t) for k in params}
        vhat = {k: v[k] / (1 - b2**t) for k in params}
        params = {k: params[k] - lr * mhat[k] / (jnp.sqrt(vhat[k]) + 1e-8) for k in params}
        return params, (m, v), total, parts

    log(f"  data: {len(pairs)} training view pairs in {t_data:.0f} s; {cfg.steps} steps of {cfg.batch}")
    history = []
    window = []
    t_train = time.perf_counter()
    for i in range(1, cfg.steps + 1):
        frac = (i - 1) / max(cfg.steps - 1, 1)
        lr = cfg.final_learning_rate + 0.5 * (cfg.learning_rate - cfg.final_learning_rate) * (
            1 + math.cos(math.pi * frac)
        )
        ref, mov, target = draw_batch(pairs, cfg, rng, cfg.batch)
        params, moments, total, parts = step(
            params, moments, jnp.float32(i), jnp.float32(lr), jnp.asarray(ref), jnp.asarray(mov),
            jnp.asarray(target),
        )  # fmt: skip
        window.append([float(total), *(float(x) for x in parts)])
        if i % cfg.log_every == 0 or i == cfg.steps:
            mean = np.mean(window, axis=0)
            window = []
            history.append({"step": i, "loss": float(mean[0]), "mse_px2": float(mean[1]),
                            "ce": float(mean[2]), "nll": float(mean[3])})  # fmt: skip
            log(
                f"  step {i}/{cfg.steps}: loss {mean[0]:.4f}, shift MSE {mean[1]:.4f} px^2 "
                f"(RMS {math.sqrt(mean[1]):.3f} px), CE {mean[2]:.3f}, NLL {mean[3]:.3f} "
                f"({time.perf_counter() - t_train:.0f} s)"
            )
    train_time = time.perf_counter() - t_train
    host = {k: np.asarray(v) for k, v in params.items()}
    # Calibration and validation on other lamellae, through the numpy path that ships.
    val_cfg = TrainConfig(**{**asdict(cfg), "max_shift_px": cfg.validation_max_shift_px})
    val = draw_batch(val_pairs, val_cfg, val_rng, cfg.validation_pairs)
    raw = evaluate(_numpy_net(host), val)
    z = raw.pop("z")
    calibration = tuple(float(max(0.5, min(4.0, math.sqrt(np.mean(z[:, a] ** 2))))) for a in range(2))
    net = _numpy_net(host, calibration)
    checked = evaluate(net, val)
    zc = checked.pop("z")
    checked["z_rms_after_calibration"] = [float(math.sqrt(np.mean(zc[:, a] ** 2))) for a in range(2)]
    checked["fraction_within_2_sigma"] = float(np.mean(np.abs(zc) <= 2.0))
    log(
        f"  validation ({cfg.validation_pairs} pairs, {cfg.validation_lamellae} other lamellae): "
        f"network RMS {checked['rms_error_px']:.3f} px, register {checked['register_rms_error_px']:.3f} px; "
        f"sigma calibration {calibration[0]:.2f}, {calibration[1]:.2f}"
    )
    cfg_dict = asdict(cfg)
    record = {
        "what": "livetomo shift-net: Siamese CNN features, learned correlation, sub-pixel head",
        "framework": f"jax {jax.__version__} on {jax.devices()[0].platform}",
        "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
        "config": cfg_dict,
        "data": {
            "simulator": "livetomo.simulators.k3 (K3Camera.expected_image), family " + cfg.family,
            "training_lamella_seeds": [
                TRAIN_SEED_BASE + 1000 * seed,
                TRAIN_SEED_BASE + 1000 * seed + cfg.n_lamellae - 1,
            ],
            "validation_lamella_seeds": [
                VALIDATION_SEED_BASE + 1000 * seed,
                VALIDATION_SEED_BASE + 1000 * seed + cfg.validation_lamellae - 1,
            ],
            "training_view_pairs": len(pairs),
            "held_out_for_benchmarks": "lamella seeds below 1000 and the 'filaments' family",
        },
        "steps": cfg.steps,
        "samples_seen": cfg.steps * cfg.batch,
        "data_time_s": round(t_data, 1),
        "train_time_s": round(train_time, 1),
        "total_time_s": round(time.perf_counter() - t_start, 1),
        "final_loss": history[-1] if history else None,
        "history": history,
        "calibration": list(calibration),
        "validation": checked,
    }
    return ShiftNet(net.params, net.beta, calibration, record), record


def save(net: ShiftNet, record: dict, folder) -> tuple[Path, Path]:
    """Write ``shift_net.npz`` and ``shift_net.json`` into ``folder``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    weights = folder / WEIGHTS_FILE
    net.save(weights)
    record = dict(record)
    record["weights_bytes"] = weights.stat().st_size
    record["n_parameters"] = int(sum(w.size + b.size for w, b in net.params.values()))
    path = folder / RECORD_FILE
    path.write_text(json.dumps(record, indent=1) + "\n")
    return weights, path


__all__ = ["LAYERS", "TrainConfig", "TrainingUnavailable", "save", "train_shift_net"]
