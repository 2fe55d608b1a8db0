"""The served model and its hot reload.

`ModelRuntime.bundle` is a plain attribute holding an immutable ModelBundle. A reload loads and
warms the new bundle off the event loop, then rebinds the attribute in one step. Requests read the
attribute once when they start and keep that reference, so requests in flight finish on the old
model, and new ones get the new model; the old bundle is freed when its last request ends.
"""

from __future__ import annotations

import asyncio
import logging
import os
from dataclasses import dataclass
from pathlib import Path

from anyio import to_thread

from gru4rec.foundation.errors import ModelUnavailable, UserError
from gru4rec.model.checkpoint import METADATA_FILE, read_metadata
from service.engine import ModelBundle, RetrievalSettings, load_bundle
from service.metrics import Metrics
from service.settings import Settings

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ReloadResult:
    previous_version: str
    model_version: str

    @property
    def changed(self) -> bool:
        return self.previous_version != self.model_version


def _fingerprint(directory: Path) -> tuple[int, int, int] | None:
    """Identity of metadata.json (inode, mtime, size); None while the directory is being swapped."""
    try:
        st = os.stat(directory / METADATA_FILE)
    except OSError:
        return None
    return (st.st_ino, st.st_mtime_ns, st.st_size)


def retrieval_settings(settings: Settings) -> RetrievalSettings:
    return RetrievalSettings(
        mode=settings.retrieval,
        min_items=settings.index_min_items,
        nprobe=settings.index_nprobe,
        candidates=settings.index_candidates,
        cache_dir=settings.index_cache_dir,
    )


def load_for_settings(settings: Settings, build_threads: int = 1) -> ModelBundle:
    """The model of `settings.model_dir`, checked, warmed, with its top-k index (built or cached)."""
    assert settings.model_dir is not None
    return load_bundle(settings.model_dir, retrieval_settings(settings), settings.warmup_steps, build_threads=build_threads)


class ModelRuntime:
    """Owns the current ModelBundle; reloads it on request or when the checkpoint directory changes.

    A reload loads the model *and* builds (or loads) its top-k index in a worker thread, with one
    thread for the index build so requests keep their CPU; the new bundle replaces the old one only
    when both are ready, so requests never see a model with another model's index.
    """

    def __init__(self, settings: Settings, metrics: Metrics) -> None:
        assert settings.model_dir is not None
        self.settings = settings
        self.directory = Path(settings.model_dir)
        self.metrics = metrics
        self.poll_s = settings.reload_poll_s
        self.bundle: ModelBundle | None = None
        self._lock = asyncio.Lock()
        self._poller: asyncio.Task | None = None
        self._seen: tuple[int, int, int] | None = None

    async def start(self, preloaded: ModelBundle | None = None) -> None:
        """Load the model (failing start-up if it cannot be), unless given, and start watching the directory."""
        self._seen = _fingerprint(self.directory)
        if preloaded is not None:
            bundle = preloaded
        else:
            threads = os.cpu_count() or 1  # nothing is served yet: the index build may use every core
            bundle = await to_thread.run_sync(load_for_settings, self.settings, threads)
        self._install(bundle)
        if self.poll_s > 0:
            self._poller = asyncio.create_task(self._poll(), name="gru4rec-model-poller")

    async def stop(self) -> None:
        if self._poller is not None:
            self._poller.cancel()
            try:
                await self._poller
            except asyncio.CancelledError:
                pass
            self._poller = None

    def _install(self, bundle: ModelBundle) -> None:
        self.bundle = bundle  # the atomic swap (model, catalogue and index together): one reference rebinding
        build_s = bundle.index.build_s if bundle.index is not None else None
        self.metrics.set_model(bundle.version, bundle.n_items, build_s)

    async def reload(self) -> ReloadResult:
        """Load the directory again and swap it in; raises ModelUnavailable (old model kept) if it cannot."""
        async with self._lock:
            previous = self.bundle.version if self.bundle else ""
            fingerprint = _fingerprint(self.directory)
            try:
                bundle = await to_thread.run_sync(load_for_settings, self.settings)
            except UserError as exc:
                self.metrics.reloads.labels("failed").inc()
                raise ModelUnavailable(f"reload failed, still serving {previous or '-'}: {exc}") from None
            self._seen = fingerprint
            self._install(bundle)
            self.metrics.reloads.labels("ok").inc()
            if bundle.version != previous:
                log.info("model reloaded: %s -> %s", previous, bundle.version)
            return ReloadResult(previous, bundle.version)

    async def _poll(self) -> None:
        while True:
            await asyncio.sleep(self.poll_s)
            try:
                await self._check_directory()
            except asyncio.CancelledError:
                raise
            except Exception:  # the poller must survive anything and try again next time
                log.exception("checking %s for a new model failed", self.directory)

    async def _check_directory(self) -> None:
        fingerprint = _fingerprint(self.directory)
        if fingerprint is None or fingerprint == self._seen:
            return
        try:
            version = str((await to_thread.run_sync(read_metadata, self.directory)).get("model_version"))
        except UserError as exc:
            log.warning("%s changed but is not readable yet: %s", self.directory, exc)
            return
        if self.bundle is not None and version == self.bundle.version:
            self._seen = fingerprint
            return
        log.info("new checkpoint %s in %s; reloading", version, self.directory)
        try:
            await self.reload()
        except UserError as exc:
            log.warning("automatic %s", exc)
