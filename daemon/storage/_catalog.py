"""The run catalogue: every run's documents, and its frames by reference, in a Tiled catalog.

bluesky-tiled-plugins' ``TiledWriter`` takes the documents of the daemon's RunEngine and of
any outside RunEngine (``documents_in``, e.g. queueserver). Frames are not copied: their
stream_resource documents point at the daemon's NXtomo run file (dataset
``/entry/instrument/<stream>/data``, index = sequence number, SWMR and opened without file
locks, as the writer opens it), and Tiled's HDF5 adapter reads them from there, live or after
the run.

- embedded (default): a local catalog in ``<storage_directory>/catalog/``: ``catalog.db``
  (SQLite: runs, streams, metadata), ``tables.sqlite`` (event columns), with the storage
  directory as readable storage; served in process (no socket). ``open_embedded_catalog``
  opens it with Tiled's client, also while the daemon writes to it.
- a Tiled server: ``tiled.uri`` and an API key (``tiled.api_key`` or ``TILED_API_KEY``); the
  server must be able to read the storage directory (a shared file system listed in its
  readable storage).

Documents wait in a bounded queue and are written by a thread of their own, so the catalogue
never slows the RunEngine or the pipeline. Events and stream data are written in batches of
``batch_size`` documents (one HTTP request each) and completely at the run's stop. A run that
cannot be written is saved as JSON lines in ``<storage_directory>/catalog/backup/`` for replay;
a daemon without Tiled installed keeps working and says so (``pip install "livetomo[tiled]"``).
"""

from __future__ import annotations

import logging
import queue
import threading
import warnings
from pathlib import Path

log = logging.getLogger("livetomo.catalog")

CATALOG_DIRECTORY = "catalog"
INSTALL_HINT = 'pip install "livetomo[tiled]"'


def tiled_missing(embedded: bool = True) -> str | None:
    """Which package the catalogue lacks here (looked up, not imported), or None when none."""
    import importlib.util

    packages = ["tiled", "bluesky_tiled_plugins", "httpx"]
    if embedded:  # Tiled's server side: the catalog is served in process
        packages += ["fastapi", "sqlalchemy", "aiosqlite", "alembic"]
    for package in packages:
        if importlib.util.find_spec(package) is None:
            return package
    return None


def run_catalog(config, storage_directory: str | Path) -> RunCatalog | None:
    """The ``RunCatalog`` the ``tiled`` configuration section asks for, or None (said in the log).

    ``enabled: true`` without Tiled installed is refused (RuntimeError); "auto" goes on without.
    """
    if config.enabled is False:
        return None
    missing = tiled_missing(embedded=config.uri is None)
    if missing is not None:
        if config.enabled is True:
            raise RuntimeError(
                f"tiled.enabled is true but {missing} is not installed: {INSTALL_HINT} "
                "(or set tiled.enabled: false)"
            )
        log.warning(
            "run catalogue off: %s is not installed (%s to catalogue runs in Tiled)", missing, INSTALL_HINT
        )
        return None
    return RunCatalog(storage_directory, uri=config.uri, api_key=config.api_key)


def open_embedded_catalog(storage_directory: str | Path, *, create: bool = False):
    """A Tiled client over the embedded catalog of ``storage_directory`` (served in process).

    ``create`` initialises the catalog's databases if they do not exist (the daemon does);
    readers leave it False.
    """
    from tiled.catalog import from_uri
    from tiled.client import Context, from_context
    from tiled.server.app import build_app

    storage = Path(storage_directory).resolve()
    directory = storage / CATALOG_DIRECTORY
    if not create and not (directory / "catalog.db").exists():
        raise FileNotFoundError(f"no Tiled catalog in {directory}")
    (directory / "data").mkdir(parents=True, exist_ok=True)
    adapter = from_uri(
        f"sqlite:///{directory / 'catalog.db'}",
        writable_storage=[str(directory / "data"), f"sqlite:///{directory / 'tables.sqlite'}"],
        readable_storage=[str(storage)],
        init_if_not_exists=create,
    )
    with warnings.catch_warnings():  # Tiled's in-process transport is Starlette's test client
        warnings.simplefilter("ignore", DeprecationWarning)
        context = Context.from_app(build_app(adapter))
    return from_context(context)


class RunCatalog:
    """A document callback writing every run to a Tiled catalog from a thread of its own.

    ``uri`` None: the embedded catalog of ``storage_directory``; else a Tiled server at ``uri``
    with ``api_key``. ``start()`` opens the catalog in the background (documents queue
    meanwhile, up to ``maxsize``); ``close()`` writes what is queued (up to ``timeout`` s).
    """

    def __init__(
        self,
        storage_directory: str | Path,
        *,
        uri: str | None = None,
        api_key: str | None = None,
        maxsize: int = 20_000,
        batch_size: int = 100,
    ):
        self.storage = Path(storage_directory).resolve()
        self.uri = uri
        self.api_key = api_key
        self.batch_size = batch_size
        self.backup_directory = self.storage / CATALOG_DIRECTORY / "backup"
        self.queue: queue.Queue = queue.Queue(maxsize)
        self.state = "starting"
        self.written = 0
        self.errors = 0
        self.dropped = 0
        self.last_error: str | None = None
        self.client = None
        self._thread = threading.Thread(target=self._run, name="livetomo-catalog", daemon=True)

    @property
    def where(self) -> str:
        return self.uri or f"embedded catalog {self.storage / CATALOG_DIRECTORY}"

    # -- document callback (any thread, never blocks)
    def __call__(self, name: str, doc: dict) -> None:
        try:
            self.queue.put_nowait((name, doc))
        except queue.Full:
            self.dropped += 1
            if self.dropped == 1 or self.dropped % 1000 == 0:
                log.error("run catalogue: %d documents dropped, its queue is full", self.dropped)

    def start(self) -> RunCatalog:
        self._thread.start()
        return self

    def close(self, timeout: float = 60.0) -> None:
        try:
            self.queue.put(None, timeout=timeout)
        except queue.Full:
            pass
        self._thread.join(timeout)
        if self._thread.is_alive():
            log.error(
                "run catalogue: %d documents not yet written to %s at shutdown",
                self.queue.qsize(),
                self.where,
            )

    def status(self) -> dict:
        return {
            "state": self.state,
            "where": self.where,
            "documents_written": self.written,
            "documents_queued": self.queue.unfinished_tasks,  # waiting or being written
            "documents_dropped": self.dropped,
            "errors": self.errors,
            "last_error": self.last_error,
        }

    # -- writer thread
    def _open(self):
        from bluesky_tiled_plugins import TiledWriter

        if self.uri is None:
            client = open_embedded_catalog(self.storage, create=True)
        else:
            from tiled.client import from_uri

            client = from_uri(self.uri, api_key=self.api_key)
        self.client = client
        return TiledWriter(client, batch_size=self.batch_size, backup_directory=str(self.backup_directory))

    def _run(self) -> None:
        writer = None
        try:
            writer = self._open()
            self.state = "ready"
            log.info("run catalogue: %s", self.where)
        except Exception as exc:
            self.state = "failed"
            self._error(f"cannot open {self.where}: {type(exc).__name__}: {exc}")
        backup = None if writer is not None else _Backup(self.backup_directory)
        while True:
            item = self.queue.get()
            if item is None:
                self.queue.task_done()
                break
            name, doc = item
            try:
                (writer or backup)(name, doc)
                self.written += writer is not None
            except Exception as exc:  # one bad document must not stop the catalogue
                self._error(f"{name} document: {type(exc).__name__}: {exc}")
            finally:
                self.queue.task_done()

    def _error(self, text: str) -> None:
        self.errors += 1
        self.last_error = text
        log.error("run catalogue: %s (runs are saved as JSON lines in %s)", text, self.backup_directory)


class _Backup:
    """Where runs go when the catalog could not be opened: one JSON-lines file per run."""

    def __init__(self, directory: Path):
        from event_model import RunRouter

        directory.mkdir(parents=True, exist_ok=True)

        def factory(name, doc):
            from bluesky.callbacks.json_writer import JSONLinesWriter

            return [JSONLinesWriter(str(directory))], []

        self._router = RunRouter([factory])

    def __call__(self, name: str, doc: dict) -> None:
        self._router(name, doc)
