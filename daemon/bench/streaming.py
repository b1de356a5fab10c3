"""``livetomo bench streaming``: frame ingest against raw pyzmq, the run-file writer against raw h5py.

Three measurements, livetomo and its peer on the same data in one run:

1. Ingest. A sender process PUSHes 8 MiB float32 frames (the protocol's multipart
   messages: start, N frames, end) over loopback TCP. livetomo's side is a
   ``FrameReceiver`` (PULL, zero-copy receive, ``decode`` with the finite-value check,
   ``StreamTracker``, hand-off to its bounded queue) plus a consumer thread taking every
   message off the queue; the peer is a bare pyzmq PULL loop receiving the same messages
   zero-copy with the same high-water mark. Throughput = frame bytes from the start
   message to the end message, MiB/s; repeats alternate the sides. A separate pass per
   side compares every received frame with what was sent. livetomo without the finite
   check is timed too, to show what that extra pass over every frame costs.
2. Storage. The same frames appended by ``NXtomoWriter`` (SWMR, per-frame angle, key,
   exposure and timestamp) and by raw h5py (``ds.resize``; ``ds[i] = frame``; same
   chunking = one frame per chunk, same resizable dataset, same ``libver="latest"``),
   each file closed (flushed) inside the timing, then read back and compared bit for
   bit. Raw h5py with ``write_direct_chunk`` (one call per frame, the chunk's bytes as they
   are) is the like-for-like peer and gives the headline ratio: it is the fastest h5py way
   and what the writer itself uses for uncompressed one-frame chunks; ``ds[i] = frame`` (HDF5's
   selection and conversion path) is reported beside it. With a filter (part 3) both sides go
   through HDF5's filter pipeline (``ds[i] = frame``): pre-compressing in Python for
   ``write_direct_chunk`` would need the filter's own compressor, which is not installed.
   Files go to /dev/shm when it has room, so the writers are timed rather than the disk.
3. Memory under a slow consumer. In a fresh receiving process, the sender goes as fast
   as it can while the consumer sleeps 20 ms per frame; the receiving process's RSS
   (/proc/self/statm) is sampled every 2 ms and its peak growth compared with the bound
   (queue size + receive HWM + 3 frames: one being received by ZeroMQ's I/O thread, one
   waiting to be queued, one in the consumer's hands) and with the data sent.
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import h5py
import numpy as np
import zmq

from ..storage import DEFAULT_COMPRESSION, NXtomoWriter, compression_options
from ..transport import End, FrameReceiver, Limits, encode_end, encode_frame, encode_start

FRAME_SHAPE = (1024, 2048)  # float32: 8 MiB
N_DISTINCT = 4
SEED = 7
HWM = 4
TIMEOUT_S = 120
MODULE = (
    "livetomo.daemon.bench.streaming"  # helpers run as `python -m MODULE` (not __name__: "__main__" there)
)


def _frames(shape=FRAME_SHAPE) -> list[np.ndarray]:
    rng = np.random.default_rng(SEED)
    return [rng.random(shape, dtype=np.float32) for _ in range(N_DISTINCT)]


# ---------------------------------------------------------------------------- processes


def _send(address: str, n_frames: int, run: str, shape) -> None:
    """Sender: start, ``n_frames`` frames (cycling through the distinct ones, zero-copy), end."""
    frames = _frames(shape)
    ctx = zmq.Context()
    sock = ctx.socket(zmq.PUSH)
    sock.sndhwm = HWM
    sock.linger = -1
    sock.connect(address)
    sock.send_multipart(encode_start(run, "bench", device="bench", dtype=np.float32, shape=shape))
    for i in range(n_frames):
        sock.send_multipart(
            encode_frame(run, "bench", i, frames[i % N_DISTINCT], angle_deg=0.5 * i), copy=False
        )
    sock.send_multipart(encode_end(run, "bench", n_frames))
    sock.close()
    ctx.term()


def _spawn(address: str, n_frames: int, run: str, shape) -> subprocess.Popen:
    """The sender in its own process, as a detector would be (no GIL shared with the receiver)."""
    return subprocess.Popen(
        [sys.executable, "-m", MODULE, "send", address, str(n_frames), run, *map(str, shape)]
    )


def _finish(proc: subprocess.Popen) -> None:
    if proc.wait(timeout=TIMEOUT_S) != 0:
        raise RuntimeError(f"benchmark sender failed with exit code {proc.returncode}")


# ---------------------------------------------------------------------------- ingest


def _raw_receive(n_frames: int, shape, check: bool) -> tuple[float, bool]:
    """Bare pyzmq PULL: seconds from the start message to the end message, and bit-exactness."""
    sock = zmq.Context.instance().socket(zmq.PULL)
    sock.rcvhwm = HWM
    sock.rcvtimeo = TIMEOUT_S * 1000  # a failed sender must not hang the benchmark
    port = sock.bind_to_random_port("tcp://127.0.0.1")
    proc = _spawn(f"tcp://127.0.0.1:{port}", n_frames, "raw", shape)
    expected = _frames(shape) if check else None
    exact = True
    sock.recv_multipart(copy=False)  # start
    t0 = time.perf_counter()
    for i in range(n_frames):
        parts = sock.recv_multipart(copy=False)
        if check:
            got = np.frombuffer(parts[1].buffer, np.float32).reshape(shape)
            exact &= bool(np.array_equal(got, expected[i % N_DISTINCT]))
    sock.recv_multipart(copy=False)  # end
    elapsed = time.perf_counter() - t0
    sock.close(linger=0)
    _finish(proc)
    return elapsed, exact


def _livetomo_receive(
    n_frames: int, shape, check: bool, *, maxsize=16, consumer_sleep_s=0.0, rss=None, finite=True
):
    """FrameReceiver + consumer thread: (seconds start→end, bit-exact and complete)."""
    receiver = FrameReceiver(
        "tcp://127.0.0.1:0", maxsize=maxsize, rcvhwm=HWM, limits=Limits(require_finite=finite)
    )
    receiver.start()
    expected = _frames(shape) if check else None
    result = {"exact": True, "t_first": None, "t_end": None}

    def consume():
        while True:
            msg = receiver.queue.get(timeout=TIMEOUT_S)
            if result["t_first"] is None:
                result["t_first"] = time.perf_counter()
            if isinstance(msg, End):
                result["t_end"] = time.perf_counter()
                return
            if check and msg.kind == "frame":
                result["exact"] &= bool(np.array_equal(msg.data, expected[msg.seq % N_DISTINCT]))
            del msg  # drop the frame before sleeping, as a consumer that is done with it would
            if consumer_sleep_s:
                time.sleep(consumer_sleep_s)

    consumer = threading.Thread(target=consume, daemon=True)
    consumer.start()
    if rss is not None:
        rss.start()
    proc = _spawn(receiver.address, n_frames, "livetomo", shape)
    consumer.join(timeout=TIMEOUT_S)
    _finish(proc)
    if rss is not None:
        rss.stop()
    status = receiver.tracker.stream_status("livetomo", "bench")
    receiver.stop()
    if result["t_end"] is None:
        raise RuntimeError(f"livetomo receiver did not deliver the end message: {receiver.status()}")
    complete = status.complete and status.accepted == n_frames
    return result["t_end"] - result["t_first"], result["exact"] and complete


# ---------------------------------------------------------------------------- memory


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class _RssSampler:
    """Samples this process's resident set size every 2 ms; ``growth`` = peak minus baseline."""

    def __init__(self):
        self.baseline = _rss_bytes()
        self.peak = self.baseline
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self):
        self._thread.start()

    def _run(self):
        while not self._stop.wait(0.002):
            self.peak = max(self.peak, _rss_bytes())

    def stop(self):
        self._stop.set()
        self._thread.join()

    @property
    def growth(self) -> int:
        return self.peak - self.baseline


def _slow_receive(n_frames: int, maxsize: int, sleep_s: float, shape) -> dict:
    """In a fresh process: receive with a slow consumer and report RSS growth (JSON on stdout)."""
    rss = _RssSampler()
    _, ok = _livetomo_receive(
        n_frames, shape, check=False, maxsize=maxsize, consumer_sleep_s=sleep_s, rss=rss
    )
    return {"rss_baseline_bytes": rss.baseline, "rss_peak_growth_bytes": rss.growth, "complete": ok}


def _measure_slow_consumer(n_frames: int, maxsize: int, sleep_s: float, shape) -> dict:
    args = ["slow", str(n_frames), str(maxsize), str(sleep_s), *map(str, shape)]
    out = subprocess.run(
        [sys.executable, "-m", MODULE, *args], capture_output=True, text=True, timeout=TIMEOUT_S, check=True
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------------------- storage


def _write_livetomo(path: Path, frames, n_frames: int, compression: str = "none") -> None:
    with NXtomoWriter(path, run_uid="bench", primary_stream="bench", compression=compression) as writer:
        writer.add_stream("bench", frames[0].dtype, frames[0].shape, exposure_units="s")
        for i in range(n_frames):
            writer.append("bench", frames[i % N_DISTINCT], index=i, angle_deg=0.5 * i, exposure=0.01)


def _write_h5py(
    path: Path, frames, n_frames: int, *, direct: bool = False, compression: str = "none"
) -> None:
    shape = frames[0].shape
    with h5py.File(path, "w", libver="latest") as f:
        ds = f.create_dataset(
            "/entry/instrument/bench/data",
            shape=(0, *shape),
            maxshape=(None, *shape),
            chunks=(1, *shape),
            dtype=frames[0].dtype,
            **compression_options(compression),
        )
        for i in range(n_frames):
            ds.resize(i + 1, axis=0)
            if direct:
                ds.id.write_direct_chunk((i, 0, 0), frames[i % N_DISTINCT])
            else:
                ds[i] = frames[i % N_DISTINCT]


def _read_back_exact(path: Path, dataset: str, frames, n_frames: int) -> bool:
    with h5py.File(path, "r") as f:
        ds = f[dataset]
        return ds.shape[0] == n_frames and all(
            np.array_equal(ds[i], frames[i % N_DISTINCT]) for i in range(n_frames)
        )


def _interleaved(runs: dict, repeats: int) -> dict[str, list[float]]:
    times: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(repeats):
        for name, fn in runs.items():
            times[name].append(fn())
    return times


def _scratch_dir(need_bytes: int) -> str | None:
    """/dev/shm when it has room: writing to memory measures the writers, not the disk's
    writeback (which hits both sides alike but swings run-to-run several-fold here)."""
    shm = "/dev/shm"
    if os.path.isdir(shm) and shutil.disk_usage(shm).free > 4 * need_bytes:
        return shm
    return None


def _storage(n_frames: int, repeats: int, shape) -> tuple[dict, dict, str]:
    frames = _frames(shape)
    writers = {
        "livetomo": (_write_livetomo, "/entry/instrument/detector/data"),
        "h5py": (_write_h5py, "/entry/instrument/bench/data"),
        "h5py_direct_chunk": (
            lambda p, fr, n: _write_h5py(p, fr, n, direct=True),
            "/entry/instrument/bench/data",
        ),
    }
    scratch = _scratch_dir(n_frames * frames[0].nbytes)
    with tempfile.TemporaryDirectory(prefix="livetomo-bench-", dir=scratch) as tmp:

        def timed(name):
            def go():
                path = Path(tmp) / f"{name}.h5"
                path.unlink(missing_ok=True)
                t0 = time.perf_counter()
                writers[name][0](path, frames, n_frames)
                return time.perf_counter() - t0

            return go

        times = _interleaved({name: timed(name) for name in writers}, repeats)
        exact = {
            name: _read_back_exact(Path(tmp) / f"{name}.h5", dataset, frames, n_frames)
            for name, (_, dataset) in writers.items()
        }
    return times, exact, str(Path(tmp).parent)


# ---------------------------------------------------------------------------- compression


def _xrf_spectra(n: int, raster: int = 64) -> list[np.ndarray]:
    """Simulated Vortex spectra of ``n`` rasters, (raster, raster, 2048) uint32 counts, 3 ms dwell."""
    from ...devices.sim import make_microprobe

    probe = make_microprobe(shape=(16, raster, raster), seed=0).world.probe
    angles = np.linspace(0.0, 180.0, n, endpoint=False)
    return [probe.raster(float(a), dwell_s=3e-3, shape=(raster, raster)).spectra for a in angles]


def _k3_frames(n: int, size: int = 256, tiles: int = 8) -> list[np.ndarray]:
    """K3 counted frames (uint16 electrons per pixel, 3 e/Å² per tilt) of (size·tiles)² pixels:
    the simulator's size² frames (simulating 2048² directly takes minutes) laid as tiles, each
    tile one of the simulated frames rolled by a random offset, so counts keep their statistics."""
    from ...devices.sim import make_tem

    camera = make_tem(shape=(size, 16, size), seed=1).world.camera
    sims = [camera.acquire(float(a), dose_e_per_A2=3.0).counts for a in np.linspace(-60.0, 60.0, 2 * n)]
    rng = np.random.default_rng(0)

    def tile():
        return np.roll(sims[rng.integers(len(sims))], tuple(rng.integers(size, size=2)), axis=(0, 1))

    frames = []
    for _ in range(n):
        rows = [np.concatenate([tile() for _ in range(tiles)], axis=1) for _ in range(tiles)]
        frames.append(np.ascontiguousarray(np.concatenate(rows, axis=0), dtype=np.uint16))
    return frames


def _compressed_size(path: Path, dataset: str) -> int:
    with h5py.File(path, "r") as f:
        return f[dataset].id.get_storage_size()


def _compression(kind: str, frames: list[np.ndarray], n_frames: int, repeats: int) -> dict:
    """The writer with the default filter against raw h5py with the same filter, and the ratio
    of every filter on these frames."""
    assert len(frames) == N_DISTINCT, "the writers cycle through N_DISTINCT frames"
    scratch = _scratch_dir(n_frames * frames[0].nbytes)
    with tempfile.TemporaryDirectory(prefix="livetomo-bench-", dir=scratch) as tmp:
        writers = {
            "livetomo": lambda p: _write_livetomo(p, frames, n_frames, compression=DEFAULT_COMPRESSION),
            "h5py": lambda p: _write_h5py(p, frames, n_frames, compression=DEFAULT_COMPRESSION),
        }

        def timed(name):
            def go():
                path = Path(tmp) / f"{kind}-{name}.h5"
                path.unlink(missing_ok=True)
                t0 = time.perf_counter()
                writers[name](path)
                return time.perf_counter() - t0

            return go

        times = _interleaved({name: timed(name) for name in writers}, repeats)
        datasets = {"livetomo": "/entry/instrument/detector/data", "h5py": "/entry/instrument/bench/data"}
        exact = {
            name: _read_back_exact(Path(tmp) / f"{kind}-{name}.h5", datasets[name], frames, n_frames)
            for name in writers
        }
        raw_bytes = n_frames * frames[0].nbytes
        ratios = {}
        for name in ("bitshuffle-lz4", "blosc-lz4", "blosc-zstd", "gzip"):
            path = Path(tmp) / f"{kind}-ratio-{name}.h5"
            _write_livetomo(path, frames, n_frames, compression=name)
            ratios[name] = raw_bytes / _compressed_size(path, "/entry/instrument/detector/data")
    mib = raw_bytes / 2**20
    speed = {name: mib / statistics.median(t) for name, t in times.items()}
    return {
        "mib_per_s": speed,
        "ratio": speed["livetomo"] / speed["h5py"],
        "exact": exact,
        "compression_ratio": ratios,
        "times_s": times,
        "frame_shape": list(frames[0].shape),
        "frame_dtype": str(frames[0].dtype),
        "n_frames": n_frames,
    }


# ---------------------------------------------------------------------------- the benchmark


def run(*, quick: bool = False, log=print) -> dict:
    shape = FRAME_SHAPE
    frame_mib = float(np.prod(shape)) * 4 / 2**20
    n_frames = 24 if quick else 96
    repeats = 3 if quick else 7
    payload_mib = n_frames * frame_mib
    log(
        f"streaming: {n_frames} frames of {shape} float32 ({frame_mib:g} MiB) per run, {repeats} interleaved "
        "repeats, medians; loopback TCP"
    )

    # 1. ingest
    _, raw_exact = _raw_receive(8, shape, check=True)
    _, live_exact = _livetomo_receive(8, shape, check=True)
    times = _interleaved(
        {
            "livetomo": lambda: _livetomo_receive(n_frames, shape, check=False)[0],
            "raw": lambda: _raw_receive(n_frames, shape, check=False)[0],
            # where the time goes: the finite check is one more pass over every frame
            "livetomo_no_finite": lambda: _livetomo_receive(n_frames, shape, check=False, finite=False)[0],
        },
        repeats,
    )
    ingest = {name: payload_mib / statistics.median(t) for name, t in times.items()}
    ingest_ratio = ingest["livetomo"] / ingest["raw"]
    log(
        f"ingest  livetomo {ingest['livetomo']:6.0f} MiB/s   raw pyzmq {ingest['raw']:6.0f} MiB/s   "
        f"ratio {ingest_ratio:.2f} (target >= 0.80)   bit-exact: livetomo {live_exact}, raw {raw_exact}   "
        f"[without the finite check {ingest['livetomo_no_finite']:.0f} MiB/s, "
        f"ratio {ingest['livetomo_no_finite'] / ingest['raw']:.2f}]"
    )

    # 2. storage
    wtimes, wexact, where = _storage(n_frames, repeats, shape)
    write = {name: payload_mib / statistics.median(t) for name, t in wtimes.items()}
    write_ratio = write["livetomo"] / write["h5py_direct_chunk"]  # like for like: see the docstring
    # MiB/s of the slowest and the fastest repeat
    wr = {k: [payload_mib / max(t), payload_mib / min(t)] for k, t in wtimes.items()}
    lt = wr["livetomo"]
    log(
        f"write   livetomo {write['livetomo']:6.0f} MiB/s [{lt[0]:.0f}-{lt[1]:.0f}]   "
        f"raw h5py write_direct_chunk {write['h5py_direct_chunk']:6.0f} MiB/s "
        f"[{wr['h5py_direct_chunk'][0]:.0f}-{wr['h5py_direct_chunk'][1]:.0f}]   "
        f"like-for-like ratio {write_ratio:.2f} (target >= 0.80)   "
        f"[h5py ds[i] = frame {write['h5py']:.0f} MiB/s, ratio {write['livetomo'] / write['h5py']:.2f}]   "
        "bit-exact: " + ", ".join(f"{k} {v}" for k, v in wexact.items()) + f"   (files in {where})"
    )

    # 3. compression: the default filter on simulated XRF spectra and K3 frames
    compressed = {
        "xrf_spectra": _compression("xrf", _xrf_spectra(4, 32 if quick else 64), 8 if quick else 24, repeats),
        "k3": _compression("k3", _k3_frames(4, 128 if quick else 256), 24 if quick else 64, repeats),
    }
    for kind, c in compressed.items():
        log(
            f"compress {kind} {c['frame_shape']} {c['frame_dtype']} ({DEFAULT_COMPRESSION}): livetomo "
            f"{c['mib_per_s']['livetomo']:6.0f} MiB/s   raw h5py, same filter {c['mib_per_s']['h5py']:6.0f} "
            f"MiB/s   ratio {c['ratio']:.2f} (target >= 0.80)   bit-exact: "
            + ", ".join(f"{k} {v}" for k, v in c["exact"].items())
            + "   compression ratio: "
            + ", ".join(f"{k} {v:.1f}x" for k, v in c["compression_ratio"].items())
        )

    # 4. memory with a slow consumer
    maxsize, sleep_s = 4, 0.02
    n_slow = 24 if quick else 64
    bound = (maxsize + HWM + 3) * frame_mib
    slow = _measure_slow_consumer(n_slow, maxsize, sleep_s, shape)
    peak_mib = slow["rss_peak_growth_bytes"] / 2**20
    log(
        f"memory  slow consumer ({sleep_s * 1e3:g} ms/frame): {n_slow * frame_mib:.0f} MiB sent; receiving "
        f"process RSS peak growth {peak_mib:.0f} MiB; bound (queue {maxsize} + HWM {HWM} + 3 frames) "
        f"{bound:.0f} MiB; every frame delivered: {slow['complete']}"
    )
    return {
        "benchmark": "streaming",
        "frame_shape": list(shape),
        "frame_dtype": "float32",
        "frame_mib": frame_mib,
        "n_frames": n_frames,
        "repeats": repeats,
        "ingest_livetomo_mib_per_s": ingest["livetomo"],
        "ingest_raw_pyzmq_mib_per_s": ingest["raw"],
        "ingest_ratio_livetomo_over_raw": ingest_ratio,
        "ingest_livetomo_no_finite_check_mib_per_s": ingest["livetomo_no_finite"],
        "ingest_ratio_no_finite_check_over_raw": ingest["livetomo_no_finite"] / ingest["raw"],
        "ingest_livetomo_bit_exact": live_exact,
        "ingest_raw_bit_exact": raw_exact,
        "ingest_times_s": times,
        "write_livetomo_mib_per_s": write["livetomo"],
        "write_raw_h5py_mib_per_s": write["h5py"],
        "write_raw_h5py_direct_chunk_mib_per_s": write["h5py_direct_chunk"],
        "write_ratio_like_for_like": write_ratio,  # over h5py write_direct_chunk
        "write_ratio_livetomo_over_h5py": write["livetomo"] / write["h5py"],
        "write_ratio_livetomo_over_h5py_direct_chunk": write["livetomo"] / write["h5py_direct_chunk"],
        "write_range_mib_per_s": wr,
        "write_bit_exact": wexact,
        "write_directory": where,
        "write_times_s": wtimes,
        "compression": DEFAULT_COMPRESSION,
        **{
            f"compress_{kind}_{key}": value
            for kind, c in compressed.items()
            for key, value in (
                ("livetomo_mib_per_s", c["mib_per_s"]["livetomo"]),
                ("raw_h5py_same_filter_mib_per_s", c["mib_per_s"]["h5py"]),
                ("ratio_livetomo_over_h5py", c["ratio"]),
                ("bit_exact", c["exact"]),
                ("compression_ratio", c["compression_ratio"]),
                ("frame_shape", c["frame_shape"]),
                ("frame_dtype", c["frame_dtype"]),
                ("n_frames", c["n_frames"]),
                ("times_s", c["times_s"]),
            )
        },
        "slow_consumer_frames": n_slow,
        "slow_consumer_sent_mib": n_slow * frame_mib,
        "slow_consumer_rss_peak_growth_mib": peak_mib,
        "slow_consumer_bound_mib": bound,
        "slow_consumer_all_delivered": slow["complete"],
    }


def _main(argv: list[str]) -> None:
    if argv[0] == "send":
        address, n, run_uid, *shape = argv[1:]
        _send(address, int(n), run_uid, tuple(map(int, shape)))
    elif argv[0] == "slow":
        n, maxsize, sleep_s, *shape = argv[1:]
        print(json.dumps(_slow_receive(int(n), int(maxsize), float(sleep_s), tuple(map(int, shape)))))
    else:
        raise SystemExit(f"unknown helper command {argv[0]!r}; allowed: send, slow")


if __name__ == "__main__":
    _main(sys.argv[1:])
