"""Where run-end refinement runs: the finisher thread (default) or slabs on ``dask.distributed``.

With ``processing.dask`` configured, a refinement is split into slabs along the rotation axis
(``processing.recon.slabs``) and each slab is a Dask task: on an embedded ``LocalCluster``
(``scheduler: null``, started at the first refinement and kept until the daemon closes, since
starting worker processes takes seconds) or on a facility scheduler. Without it, nothing of
Dask is imported and the finisher refines the whole volume itself, as before.

Cancelling (``cancel_refinement`` in the control API) sets the run's ``cancel`` event: the
in-process loop stops before its next block of iterations; on Dask the slabs not yet done are
cancelled (a slab already running on a worker finishes there and its result is dropped) and
the waiting stops at once. Either way the run keeps its FBP volume and no refined one.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time

import numpy as np

from ...processing.recon.slabs import RefinementCancelled, assemble, plan_slabs
from ..config import Dask

log = logging.getLogger("livetomo.pipeline")
POLL_S = 0.1  # how often waiting on Dask looks at the cancel event


class SlabRunner:
    """Runs slab tasks on ``dask.distributed`` as configured by ``processing.dask``."""

    def __init__(self, config: Dask):
        self.config = config
        self._client = None
        self._cluster = None
        self._lock = threading.Lock()

    @property
    def address(self) -> str | None:
        """The scheduler's address once connected (the embedded cluster's is chosen at start)."""
        return None if self._client is None else self._client.scheduler.address

    def client(self):
        """The Dask client, connecting (or starting the LocalCluster) on first use."""
        with self._lock:
            if self._client is None:
                from distributed import Client, LocalCluster

                if self.config.scheduler is None:
                    threads = str(self.config.threads_per_worker)
                    # Each worker's numba/BLAS/OpenMP threads are limited to its share of cores, so
                    # N workers do not oversubscribe the machine the acquisition also runs on.
                    env = {"NUMBA_NUM_THREADS": threads, "OMP_NUM_THREADS": threads,
                           "OPENBLAS_NUM_THREADS": threads, "MKL_NUM_THREADS": threads}  # fmt: skip
                    self._cluster = LocalCluster(
                        n_workers=self.config.workers,
                        threads_per_worker=self.config.threads_per_worker,
                        processes=True,
                        dashboard_address=None,
                        env=env,
                    )
                    self._client = Client(self._cluster)
                else:
                    self._client = Client(self.config.scheduler)
                log.info("refinement on Dask at %s", self._client.scheduler.address)
            return self._client

    def close(self) -> None:
        with self._lock:
            if self._client is not None:
                self._client.close()
            if self._cluster is not None:
                self._cluster.close()
            self._client = self._cluster = None

    def refine(
        self,
        recon,
        method: str,
        n_iter: int,
        *,
        nonnegative: bool,
        report,
        text: str,
        cancel,
        seconds: float | None = None,
    ):
        """Refine ``recon`` (an IncrementalReconstructor) in slabs on Dask; the refined volume.

        ``report(text, slabs done, slabs)`` after each slab; raises RefinementCancelled when
        ``cancel`` is set before every slab is back. ``seconds`` (``processing.refine_seconds``)
        is the refinement's wall-clock budget from now: every slab stops iterating when it is
        spent (after at least one iteration), so slabs that started late run fewer iterations
        than early ones, where the whole-volume loop stops all slices at the same iteration.
        """
        from distributed import wait

        angles, data, dx = recon.aligned_projections()
        tasks = plan_slabs(
            np.asarray(data),
            angles,
            np.asarray(recon.volume()),
            method=method,
            n_iter=n_iter,
            slab_slices=self.config.slab_slices,
            halo=0 if method == "sirt" else self.config.halo_slices,
            shape_yx=recon.shape_yx,
            center_offset=recon.center_offset,
            shifts_dx=dx,
            voxel_size=recon.voxel_size,
            nonnegative=nonnegative,
        )
        client = self.client()
        if seconds is not None:
            # the clock starts once the cluster is up: starting a LocalCluster takes seconds
            # that are not refinement
            deadline = time.time() + float(seconds)
            tasks = [dataclasses.replace(t, deadline=deadline) for t in tasks]
        report(f"{text}: {len(tasks)} slabs on Dask", 0, len(tasks))
        # The slabs' data go to the workers directly (scatter, spread over them), not inside the
        # task graph through the scheduler, which warns about (and slows down at) tens of MiB.
        scattered = client.scatter(tasks, hash=False)
        futures = {
            client.submit(_refine_slab, d, pure=False): t.index for d, t in zip(scattered, tasks, strict=True)
        }
        results: dict[int, np.ndarray] = {}
        pending = set(futures)
        try:
            while pending:
                if cancel is not None and cancel.is_set():
                    raise RefinementCancelled(f"cancelled with {len(results)} of {len(tasks)} slabs done")
                try:
                    done, pending = wait(pending, timeout=POLL_S, return_when="FIRST_COMPLETED")
                except TimeoutError:  # nothing finished within POLL_S: look at the cancel event again
                    continue
                for f in done:
                    results[futures[f]] = f.result()
                if done:
                    report(f"{text}: slab {len(results)}/{len(tasks)} on Dask", len(results), len(tasks))
        finally:
            if pending:
                client.cancel(list(pending))
        return assemble(tasks, [results[t.index] for t in tasks])


def _refine_slab(task):
    """A slab on a Dask worker (module-level: workers import it by name)."""
    from ...processing.recon.slabs import refine_slab

    return refine_slab(task)
