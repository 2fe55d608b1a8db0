"""Micro-batching: the requests of a moment share one GRU step and one score product.

Scoring a session against 37k items reads a 15 MB matrix; scoring eight sessions at once reads it
once too. Requests (on the event loop) hand a Job to the batcher's worker thread and await its
future; the worker takes every job waiting, runs them as one batch, and hands the results back to
the loop in one call.

How long to wait for company: a job that finds the worker idle waits at most GRU4REC_BATCH_WAIT_MS
for others, and only while requests are arriving fast enough for another one to be likely within that
time (an average gap under the wait); at a trickle every request is run at once. Jobs that arrive
while a batch runs form the next batch without any wait. The worker runs the compiled kernels (or
PyTorch) and faiss, which release the GIL, so the event loop keeps parsing requests meanwhile.

With several worker processes the cores are already shared out between them, and a thread per
process only adds hand-overs (a thread wake-up and a GIL transfer each way per batch). There the
batches run on the event loop itself (`threaded=False`, GRU4REC_MODEL_THREAD): the jobs of the
requests that one pass of the loop brings in are run together once the loop has handled them all,
and requests arriving meanwhile wait in the sockets to form the next batch.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from service.engine import ModelBundle, Query, TopK
from service.metrics import Metrics

log = logging.getLogger(__name__)


@dataclass(slots=True)
class Job:
    """Advance `state` (None: a new session) by `steps`, then rank for `query` (None: do not rank)."""

    bundle: ModelBundle
    state: np.ndarray | None
    steps: Sequence[int]
    query: Query | None
    future: asyncio.Future = field(repr=False)
    arrived: float = 0.0


@dataclass(frozen=True, slots=True)
class Outcome:
    state: np.ndarray  # the new state (a row of its own; never shared with another job)
    top: TopK | None


class Batcher:
    """Runs the jobs of all requests in batches: in one worker thread, or on the event loop."""

    def __init__(self, metrics: Metrics, max_batch: int = 64, max_wait_s: float = 0.001, threaded: bool = True) -> None:
        self.metrics = metrics
        self.max_batch = max_batch
        self.max_wait_s = max_wait_s
        self.threaded = threaded
        self._jobs: list[Job] = []
        self._cond = threading.Condition(threading.Lock())
        self._closed = False
        self._gap = 1.0  # moving average of the time between two jobs (seconds)
        self._last_arrival = 0.0
        self._thread = threading.Thread(target=self._run, name="gru4rec-batcher", daemon=True)
        self._started = False

    def start(self) -> None:
        if not self._started:
            self._started = True
            if self.threaded:
                self._thread.start()
            else:
                _one_thread_for_faiss()  # for this (the event loop's) thread

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify()
        if self._started and self.threaded:
            self._thread.join(10)

    async def run(self, bundle: ModelBundle, state: np.ndarray | None, steps: Sequence[int], query: Query | None) -> Outcome:
        """The job's outcome, computed in a batch with whatever else is waiting."""
        loop = asyncio.get_running_loop()
        now = time.perf_counter()
        job = Job(bundle, state, steps, query, loop.create_future(), now)
        if not self.threaded:
            return await self._run_on_loop(loop, job)
        with self._cond:
            if self._closed:
                raise RuntimeError("the batcher is closed")
            self._gap += 0.5 * (min(now - self._last_arrival, 1.0) - self._gap)
            self._last_arrival = now
            self._jobs.append(job)
            if len(self._jobs) == 1 or len(self._jobs) >= self.max_batch:
                self._cond.notify()
        return await job.future

    # -- on the event loop -----------------------------------------------------------------------------
    async def _run_on_loop(self, loop: asyncio.AbstractEventLoop, job: Job) -> Outcome:
        if self._closed:
            raise RuntimeError("the batcher is closed")
        self._jobs.append(job)
        if len(self._jobs) == 1:  # after the callbacks already due: the other requests of this pass
            loop.call_soon(self._run_waiting)
        return await job.future

    def _run_waiting(self) -> None:
        batch = self._jobs[: self.max_batch]
        del self._jobs[: self.max_batch]
        if self._jobs:
            asyncio.get_running_loop().call_soon(self._run_waiting)
        self._run_batch(batch, time.perf_counter() - batch[0].arrived, _deliver)

    def _run_batch(self, batch: list[Job], waited: float, deliver) -> None:
        """Run a batch and hand its jobs their outcomes through `deliver`."""
        self.metrics.observe_batch(len(batch), waited)
        try:
            outcomes = _execute(batch)
        except BaseException as exc:  # a bug: every request of the batch gets it (a logged 500)
            log.exception("batch of %d failed", len(batch))
            deliver(batch, None, exc)
            return
        deliver(batch, outcomes, None)

    # -- worker thread -----------------------------------------------------------------------------
    def _run(self) -> None:
        _one_thread_for_faiss()
        while True:
            batch, waited = self._next_batch()
            if batch is None:
                return
            self._run_batch(batch, waited, _deliver_soon)

    def _next_batch(self) -> tuple[list[Job] | None, float]:
        """Wait for jobs; then, if company is likely soon, up to max_wait_s after the first one."""
        with self._cond:
            while not self._jobs and not self._closed:
                self._cond.wait()
            if not self._jobs:
                return None, 0.0
            first = self._jobs[0].arrived
            if self._gap < self.max_wait_s:
                deadline = first + self.max_wait_s
                while len(self._jobs) < self.max_batch and not self._closed:
                    remaining = deadline - time.perf_counter()
                    if remaining <= 0:
                        break
                    self._cond.wait(remaining)
            batch = self._jobs[: self.max_batch]
            del self._jobs[: self.max_batch]
        return batch, max(0.0, time.perf_counter() - first)


def _one_thread_for_faiss() -> None:
    """faiss's OpenMP team size is per calling thread: searches of a few queries gain nothing from more."""
    try:
        import faiss

        faiss.omp_set_num_threads(1)
    except ImportError:  # pragma: no cover - faiss is a dependency; exact scoring needs none of it
        pass


def _execute(batch: list[Job]) -> list[Outcome]:
    """Run a batch: jobs of the same model together (a reload may leave two models in one batch)."""
    outcomes: list[Outcome | None] = [None] * len(batch)
    groups: dict[int, list[int]] = {}
    for i, job in enumerate(batch):
        groups.setdefault(id(job.bundle), []).append(i)
    for members in groups.values():
        jobs = [batch[i] for i in members]
        for i, outcome in zip(members, _execute_group(jobs[0].bundle, jobs), strict=True):
            outcomes[i] = outcome
    return outcomes  # type: ignore[return-value]


def _execute_group(bundle: ModelBundle, jobs: list[Job]) -> list[Outcome]:
    states = np.zeros((len(jobs), bundle.state_size), dtype=np.float32)
    for r, job in enumerate(jobs):
        if job.state is not None:
            states[r] = job.state
    states = bundle.advance(states, [job.steps for job in jobs])
    ranked = [r for r, job in enumerate(jobs) if job.query is not None]
    tops: list[TopK | None] = [None] * len(jobs)
    if ranked:
        h = bundle.session_vectors(states)[ranked]
        for r, top in zip(ranked, bundle.rank(h, [jobs[r].query for r in ranked]), strict=True):
            tops[r] = top
    return [Outcome(states[r].copy(), tops[r]) for r in range(len(jobs))]


def _deliver_soon(batch: list[Job], outcomes: list[Outcome] | None, error: BaseException | None) -> None:
    """Hand results to the event loop in one call per loop (usually one loop for the whole batch)."""
    by_loop: dict[int, tuple[asyncio.AbstractEventLoop, list[int]]] = {}
    for i, job in enumerate(batch):
        loop = job.future.get_loop()
        by_loop.setdefault(id(loop), (loop, []))[1].append(i)
    for loop, members in by_loop.values():
        jobs = [batch[i] for i in members]
        results = None if outcomes is None else [outcomes[i] for i in members]
        try:
            loop.call_soon_threadsafe(_deliver, jobs, results, error)
        except RuntimeError:  # that loop is closed: nobody is waiting any more
            pass


def _deliver(jobs: list[Job], outcomes: list[Outcome] | None, error: BaseException | None) -> None:
    for i, job in enumerate(jobs):
        if job.future.done():  # the request was cancelled (client gone)
            continue
        if outcomes is None:
            job.future.set_exception(error if error is not None else RuntimeError("batch failed"))
        else:
            job.future.set_result(outcomes[i])
