"""Synthetic YooChoose-like click logs: realistic enough for benchmarks, tests and model sanity checks.

The generator draws a small "world" from the seed (a catalogue of items with Zipf-like popularity,
grouped into clusters, each item with sparse lists of preferred successors) and then walks every
session through it at once, one step at a time in numpy (never a Python loop per event):

* session lengths: 13% single clicks, otherwise a discretised lognormal fitted to RSC15 (after
  dropping length-1 sessions: mean about 3.9, median 3, p90 7, p99 18; capped at 200 like YooChoose);
* the first item is drawn by popularity; every next click is a consecutive repeat (26% of
  transitions, as in RSC15), a step back to the item before, a preferred successor of the current item,
  a popular item of the session's interest cluster, or a jump to a globally popular item;
* the next click depends on more than the current item: each session has a hidden intent that picks
  which successor lists it follows, and an interest cluster that drifts slowly and makes successors
  outside it less likely;
* popularity is a Zipf-Mandelbrot law that drifts from day to day, so a time split behaves like a
  real one (yesterday's best sellers are not quite today's);
* session starts follow a daily cycle (quiet nights, evening peak, UTC) over `days` days; gaps between
  clicks are lognormal (median about a minute, a per-session speed factor, capped at one hour), and
  every session lies inside the window.

Same seed, same arguments: the same frame and byte-identical files.
"""

from __future__ import annotations

import gzip
import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from gru4rec.data.session_files import COLUMNS
from gru4rec.foundation.atomic import atomic_file
from gru4rec.foundation.errors import UserError
from gru4rec.foundation.logs import progress

log = logging.getLogger(__name__)


# Session length: P(1) and a lognormal (mu, sigma) discretised on 1..MAX_SESSION_LENGTH, fitted by
# maximum likelihood to the rsc15_100k length histogram (lengths >= 2).
P_SINGLE_CLICK = 0.13
LENGTH_MU, LENGTH_SIGMA = 0.15, 1.04
MAX_SESSION_LENGTH = 200

# Item popularity: weight of popularity rank r (1-based) is (r + POP_OFFSET * n_items) ** -POP_EXPONENT,
# a Zipf-Mandelbrot law whose flat head scales with the catalogue (matches rsc15_100k: top 1% of items
# about 17% of clicks, top 10% about 60%, log-log slope about -1 over the middle ranks).
POP_EXPONENT = 1.25
POP_OFFSET = 0.007

# Successor lists: up to N_SUCCESSORS per item, a share of them from the item's own cluster, the k-th
# followed with weight (k + 1) ** -SUCCESSOR_EXPONENT.
N_SUCCESSORS = 12
OWN_CLUSTER_SUCCESSORS = 0.6
SUCCESSOR_EXPONENT = 1.0

# What the next click is (per transition).
P_REPEAT = 0.26  # the same item again (RSC15: 13,625 of 52,484 transitions in train_full)
P_BACK = 0.05  # the item clicked before the current one
P_SUCCESSOR = 0.50  # a preferred successor of the current item
P_CLUSTER = 0.13  # a popular item of the session's interest cluster
# rest (0.06): a jump to a globally popular item, which also moves the session's interest there
P_STICK = 0.7  # a successor outside the interest cluster is redrawn once with this probability
P_DRIFT = 0.3  # moving to an item outside the interest cluster moves the interest with it
# Every session has one of N_INTENTS intents (browsing modes), each with its own successor lists: the
# links a session follows reveal its intent, which a model of the whole session can use.
N_INTENTS = 3

# Popularity drifts: an item's log-weight moves by a mean-reverting walk (stationary sd DRIFT_SIGMA,
# day-to-day correlation DRIFT_DAILY_CORRELATION), changing once per epoch (a day; at most
# MAX_EPOCHS epochs over the window). Yesterday's best sellers are not quite today's.
DRIFT_SIGMA = 1.0
DRIFT_DAILY_CORRELATION = 0.7
MAX_EPOCHS = 32

# Time between clicks: lognormal around GAP_MEDIAN_S seconds times a per-session speed factor.
GAP_MEDIAN_S = 55.0
GAP_SIGMA = 1.2
SPEED_SIGMA = 0.5
MAX_GAP_S = 3600.0

# Relative traffic by UTC hour of day (shaped like RSC15: quiet nights, evening peak).
HOURLY_TRAFFIC = (
    0.005, 0.003, 0.003, 0.004, 0.013, 0.025, 0.037, 0.051, 0.053, 0.052, 0.058, 0.058,
    0.056, 0.053, 0.053, 0.054, 0.058, 0.071, 0.087, 0.082, 0.065, 0.034, 0.018, 0.009,
)

ITEM_ID_BASE = 214_000_000
_CHUNK_ROWS = 1 << 20


def _length_pmf() -> np.ndarray:
    k = np.arange(1, MAX_SESSION_LENGTH + 1, dtype=np.float64)
    z_hi = (np.log(k + 0.5) - LENGTH_MU) / LENGTH_SIGMA
    z_lo = (np.log(k - 0.5, where=k > 1, out=np.full_like(k, -np.inf)) - LENGTH_MU) / LENGTH_SIGMA
    phi = np.vectorize(lambda z: 0.5 * math.erfc(-z / math.sqrt(2.0)))
    p = phi(z_hi) - phi(z_lo)
    p[0] = 0.0
    p *= (1.0 - P_SINGLE_CLICK) / p.sum()
    p[0] = P_SINGLE_CLICK
    return p


# --------------------------------------------------------------------------------------------------
# The world: catalogue, popularity, clusters, successor lists


@dataclass(frozen=True)
class _World:
    ids: np.ndarray  # (n,) int64 public item ids
    cluster: np.ndarray  # (n,) int32 cluster of each item
    weight: np.ndarray  # (n,) float64 long-run popularity weight
    by_cluster: np.ndarray  # (n,) int32 items sorted by cluster
    cluster_lo: np.ndarray  # (n_clusters,) first position of each cluster in by_cluster
    cluster_hi: np.ndarray  # (n_clusters,) one past the last position
    successors: np.ndarray  # (n_intents, n, k) int32 preferred successors under each intent
    successor_cum: np.ndarray  # (k,) float64 cumulative weight of successor positions
    # Popularity per epoch, flattened: epoch e's cumulative weights run from e to e + 1.
    pop_cum: np.ndarray  # (n_epochs * n,) in item order
    cluster_cum: np.ndarray  # (n_epochs * n,) in by_cluster order

    @property
    def n_items(self) -> int:
        return len(self.ids)

    def popular(self, u: np.ndarray, epoch: np.ndarray | int = 0) -> np.ndarray:
        """Items drawn by the popularity of their epoch, one for each uniform number in u."""
        n = self.n_items
        base = np.asarray(epoch, dtype=np.int64) * n
        j = np.searchsorted(self.pop_cum, u + np.asarray(epoch, dtype=np.float64), side="right")
        return (np.clip(j, base, base + n - 1) - base).astype(np.int32)

    def popular_in(self, clusters: np.ndarray, u: np.ndarray, epoch: np.ndarray | int = 0) -> np.ndarray:
        """Items drawn by the popularity of their epoch inside the given (non-empty) clusters."""
        base = np.asarray(epoch, dtype=np.int64) * self.n_items
        lo_pos = base + self.cluster_lo[clusters]
        hi_pos = base + self.cluster_hi[clusters]
        lo = np.where(lo_pos > base, self.cluster_cum[np.maximum(lo_pos - 1, 0)], base / self.n_items)
        hi = self.cluster_cum[hi_pos - 1]
        j = np.searchsorted(self.cluster_cum, lo + u * (hi - lo), side="right")
        return self.by_cluster[np.clip(j, lo_pos, hi_pos - 1) - base]

    def successor(self, intents: np.ndarray, items: np.ndarray, u: np.ndarray) -> np.ndarray:
        k = np.searchsorted(self.successor_cum, u, side="right")
        k = np.minimum(k, self.successors.shape[2] - 1)
        return self.successors[intents, items, k]


def _cumulative_by_epoch(weights: np.ndarray) -> np.ndarray:
    """Flattened per-row cumulative sums of (n_epochs, n) weights, row e scaled to run from e to e + 1."""
    cum = np.cumsum(weights, axis=1)
    cum /= cum[:, -1:]
    cum += np.arange(len(weights), dtype=np.float64)[:, None]
    return cum.ravel()


def _build_world(n_items: int, rng: np.random.Generator, n_epochs: int = 1, epoch_days: float = 1.0,
                 drift_rng: np.random.Generator | None = None) -> _World:
    n = n_items
    # Public ids: distinct 9-digit numbers from 214000000 upwards, in no particular order.
    span = min(max(10 * n, 1_000_000), max(n, 999_999_999 - ITEM_ID_BASE))
    ids = ITEM_ID_BASE + rng.choice(span, size=n, replace=False).astype(np.int64)

    rank = rng.permutation(n)
    weight = (rank + 1.0 + POP_OFFSET * n) ** -POP_EXPONENT

    n_clusters = max(1, int(round(math.sqrt(n))))
    size_weight = rng.lognormal(0.0, 0.8, size=n_clusters)
    cluster = rng.choice(n_clusters, size=n, p=size_weight / size_weight.sum()).astype(np.int32)
    by_cluster = np.argsort(cluster, kind="stable").astype(np.int32)
    sorted_cluster = cluster[by_cluster]
    cluster_lo = np.searchsorted(sorted_cluster, np.arange(n_clusters), side="left")
    cluster_hi = np.searchsorted(sorted_cluster, np.arange(n_clusters), side="right")

    # Successor lists, one per intent, drawn by long-run popularity.
    k = min(N_SUCCESSORS, n - 1)
    k_own = int(round(k * OWN_CLUSTER_SUCCESSORS))
    static = _World(ids, cluster, weight, by_cluster, cluster_lo, cluster_hi,
                    np.empty((0, n, 0), np.int32), np.empty(0),
                    _cumulative_by_epoch(weight[None, :]), _cumulative_by_epoch(weight[by_cluster][None, :]))
    successors = np.empty((N_INTENTS, n, k), dtype=np.int32)
    for intent in range(N_INTENTS):
        own = static.popular_in(np.repeat(cluster, k_own), rng.random(n * k_own)).reshape(n, k_own)
        other = static.popular(rng.random(n * (k - k_own))).reshape(n, k - k_own)
        table = rng.permuted(np.concatenate([own, other], axis=1), axis=1).astype(np.int32)
        # Never the item itself: those draws become a uniformly chosen other item.
        rows, cols = np.nonzero(table == np.arange(n, dtype=np.int32)[:, None])
        table[rows, cols] = (rows + 1 + rng.integers(0, n - 1, size=len(rows))) % n
        successors[intent] = table
    successor_weight = (np.arange(k) + 1.0) ** -SUCCESSOR_EXPONENT
    successor_cum = np.cumsum(successor_weight) / successor_weight.sum()

    # Popularity drifts: each item's log-weight follows a mean-reverting walk from epoch to epoch.
    if n_epochs > 1 and drift_rng is not None:
        rho = DRIFT_DAILY_CORRELATION ** epoch_days
        walk = np.empty((n_epochs, n))
        walk[0] = drift_rng.standard_normal(n)
        for e in range(1, n_epochs):
            walk[e] = rho * walk[e - 1] + math.sqrt(1.0 - rho * rho) * drift_rng.standard_normal(n)
        walk *= DRIFT_SIGMA
        np.exp(walk, out=walk)
        walk *= weight
        epoch_weight = walk
    else:
        epoch_weight = weight[None, :]
    return _World(ids, cluster, weight, by_cluster, cluster_lo, cluster_hi, successors, successor_cum,
                  _cumulative_by_epoch(epoch_weight), _cumulative_by_epoch(epoch_weight[:, by_cluster]))


def _streams(seed: int) -> list[np.random.Generator]:
    """Independent generators: world, session lengths and times, clicks, popularity drift."""
    return [np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(4)]


def item_categories(n_items: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(item ids sorted, their categories 1..n_clusters) of the world `generate_log` uses."""
    world = _build_world(n_items, _streams(seed)[0])
    order = np.argsort(world.ids)
    return world.ids[order], world.cluster[order].astype(np.int64) + 1


# --------------------------------------------------------------------------------------------------
# Validation


def _check_int(name: str, value, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise UserError(f"{name} must be an integer, got {value!r}")
    if value < minimum:
        raise UserError(f"{name} must be at least {minimum}, got {value}")
    return int(value)


LAST_TIME = pd.Timestamp.max.tz_localize("UTC").floor("D")  # times are read back as datetime64[ns]


def _parse_start(start: str, days: float) -> int:
    """Unix milliseconds of `start` (naive values are UTC); the window must lie in 1970..2262."""
    try:
        ts = pd.Timestamp(start)
    except (ValueError, TypeError, OverflowError) as exc:
        raise UserError(f"start: cannot parse {start!r} as a date/time ({exc})") from None
    if ts is pd.NaT:
        raise UserError(f"start: cannot parse {start!r} as a date/time")
    ts = ts.tz_localize("UTC") if ts.tz is None else ts.tz_convert("UTC")
    first = pd.Timestamp(0, tz="UTC")
    if ts < first or ts > LAST_TIME or ts.value / 1e9 + days * 86_400 > LAST_TIME.value / 1e9:
        raise UserError(
            f"start: {start} plus {days:g} days lies outside the supported time range, "
            f"{first.date()} to {LAST_TIME.date()}"
        )
    return int(ts.value // 1_000_000)


BYTES_PER_EVENT = 64  # peak memory of generate_log plus a writer: measured 30-50 B per click (12M clicks)
BYTES_PER_ITEM = 512  # the catalogue's tables: measured about 270 B per item (1M items)
BASE_BYTES = 500_000_000  # the libraries and the fixed-size tables


def estimated_memory(n_events: int, n_items: int) -> int:
    """Bytes `generate_log` and a writer hold at their peak (an upper bound of measured peaks)."""
    return BASE_BYTES + BYTES_PER_EVENT * n_events + BYTES_PER_ITEM * n_items


# --------------------------------------------------------------------------------------------------
# Generation


def generate_log(
    n_events: int,
    n_items: int,
    seed: int = 0,
    *,
    days: float = 7.0,
    start: str = "2014-04-01",
) -> pd.DataFrame:
    """A synthetic click log of exactly `n_events` rows over a catalogue of `n_items` items.

    Columns SessionId (int64, 1, 2, ... in order of session start), ItemId (int64, 9-digit
    YooChoose-like ids) and Time (float64 Unix seconds, UTC, whole milliseconds). Rows are grouped by
    session, sessions ordered by start time, clicks in time order; all times lie in
    [start, start + days). Not every item need occur: popularity is Zipf-like, so a short log misses
    much of the long tail.
    """
    n_events = _check_int("n_events", n_events, 1)
    n_items = _check_int("n_items", n_items, 2)
    if n_items > n_events:
        raise UserError(f"n_items ({n_items}) must not exceed n_events ({n_events})")
    seed = _check_int("seed", seed, 0)
    try:
        days = float(days)
    except (TypeError, ValueError):
        raise UserError(f"days must be a number, got {days!r}") from None
    if not (math.isfinite(days) and days > 0):
        raise UserError(f"days must be a positive number, got {days}")
    base_ms = _parse_start(start, days)
    window_ms = int(round(days * 86_400_000))
    if window_ms < 1:
        raise UserError(f"days must span at least a millisecond, got {days}")

    world_rng, time_rng, click_rng, drift_rng = _streams(seed)
    n_epochs = min(MAX_EPOCHS, max(1, math.ceil(days - 1e-9)))
    world = _build_world(n_items, world_rng, n_epochs, days / n_epochs, drift_rng)
    lengths = _session_lengths(n_events, time_rng)
    log.debug("synth: %d items, %d clusters, %d sessions, %d popularity epochs",
              n_items, int(world.cluster.max()) + 1, len(lengths), n_epochs)
    lengths, start_ms, time_ms = _session_times(lengths, window_ms, base_ms, time_rng)
    time_ms += base_ms
    epoch = np.minimum(start_ms * n_epochs // window_ms, n_epochs - 1).astype(np.int32)
    del start_ms
    items = _clicks(lengths, epoch, world, click_rng)

    n_sessions = len(lengths)
    session_id = np.repeat(np.arange(1, n_sessions + 1, dtype=np.int64), lengths)
    item_id = world.ids[items]
    del items
    time = time_ms.astype(np.float64)
    del time_ms
    time /= 1000.0
    df = pd.DataFrame({"SessionId": session_id, "ItemId": item_id, "Time": time}, copy=False)
    df.attrs["synth"] = {"n_items": n_items, "seed": seed}
    log.info("generated %d clicks in %d sessions over %.4g days (catalogue of %d items)",
             n_events, n_sessions, days, n_items)
    return df


def _session_lengths(n_events: int, rng: np.random.Generator) -> np.ndarray:
    cdf = np.cumsum(_length_pmf())
    mean = float(np.dot(np.arange(1, MAX_SESSION_LENGTH + 1), _length_pmf()))
    parts, total = [], 0
    while total < n_events:
        m = int((n_events - total) / mean * 1.05) + 16
        part = np.searchsorted(cdf, rng.random(m) * cdf[-1], side="right").astype(np.int32) + 1
        np.minimum(part, MAX_SESSION_LENGTH, out=part)
        parts.append(part)
        total += int(part.sum(dtype=np.int64))
    lengths = np.concatenate(parts)
    csum = np.cumsum(lengths, dtype=np.int64)
    n_sessions = int(np.searchsorted(csum, n_events, side="left")) + 1
    lengths = lengths[:n_sessions]
    lengths[-1] -= int(csum[n_sessions - 1] - n_events)
    return lengths


def _session_times(lengths: np.ndarray, window_ms: int, base_ms: int, rng: np.random.Generator):
    """Sort sessions by start and time every click: (lengths, session starts, click times) in ms
    from the window start, sessions in start order."""
    n_sessions = len(lengths)
    n_events = int(lengths.sum(dtype=np.int64))
    offsets = np.zeros(n_sessions, dtype=np.int64)
    np.cumsum(lengths[:-1], out=offsets[1:])

    # Gaps (ms) in the order the sessions were drawn; the first click of a session has gap 0.
    speed = rng.lognormal(0.0, SPEED_SIGMA, size=n_sessions)
    gaps = np.empty(n_events, dtype=np.int32)
    for s0, s1, e0, e1 in _session_chunks(offsets, lengths, n_events):
        g = rng.lognormal(math.log(GAP_MEDIAN_S * 1000.0), GAP_SIGMA, size=e1 - e0)
        g *= np.repeat(speed[s0:s1], lengths[s0:s1])
        np.clip(np.rint(g), 1.0, MAX_GAP_S * 1000.0, out=g)
        gaps[e0:e1] = g
    gaps[offsets] = 0
    duration = np.add.reduceat(gaps, offsets, dtype=np.int64)

    # Sessions longer than the window (only with tiny windows) are squeezed into it.
    too_long = duration > window_ms - 1
    if too_long.any():
        factor = np.where(too_long, (window_ms - 1) / np.maximum(duration, 1), 1.0)
        gaps = np.floor(gaps * np.repeat(factor, lengths)).astype(np.int32)
        duration = np.add.reduceat(gaps, offsets, dtype=np.int64)

    # Start times follow the daily cycle, conditioned on the session ending inside the window.
    edges, cum = _daily_cdf(window_ms, base_ms)
    latest = (window_ms - 1 - duration).astype(np.float64)
    u = rng.random(n_sessions) * np.interp(latest, edges, cum)
    start = np.floor(np.interp(u, cum, edges)).astype(np.int64)
    np.clip(start, 0, window_ms - 1 - duration, out=start)

    order = np.argsort(start, kind="stable")
    new_lengths = lengths[order]
    new_offsets = np.zeros(n_sessions, dtype=np.int64)
    np.cumsum(new_lengths[:-1], out=new_offsets[1:])
    # Move every session's gaps to its place in start order, then accumulate them into times.
    shift = offsets[order] - new_offsets
    times = np.empty(n_events, dtype=np.int64)
    for s0, s1, e0, e1 in _session_chunks(new_offsets, new_lengths, n_events):
        times[e0:e1] = gaps[np.arange(e0, e1) + np.repeat(shift[s0:s1], new_lengths[s0:s1])]
    del gaps
    np.cumsum(times, out=times)
    # times is now a running total over all sessions; make it start[s] + time since the session began.
    base = start[order] - times[new_offsets]
    for s0, s1, e0, e1 in _session_chunks(new_offsets, new_lengths, n_events):
        times[e0:e1] += np.repeat(base[s0:s1], new_lengths[s0:s1])
    return new_lengths, start[order], times


def _session_chunks(offsets: np.ndarray, lengths: np.ndarray, n_events: int, rows: int = 4 * _CHUNK_ROWS):
    """(first session, end session, first event, end event) of runs of whole sessions ~`rows` long."""
    n_sessions = len(offsets)
    s0 = 0
    while s0 < n_sessions:
        e0 = int(offsets[s0])
        s1 = max(int(np.searchsorted(offsets, e0 + rows, side="left")), s0 + 1)
        e1 = int(offsets[s1]) if s1 < n_sessions else n_events
        yield s0, s1, e0, e1
        s0 = s1


def _daily_cdf(window_ms: int, base_ms: int) -> tuple[np.ndarray, np.ndarray]:
    """Piecewise-linear CDF (edges in ms from `base_ms`, cumulative weight) of session starts."""
    bin_ms = 60_000
    n_bins = -(-window_ms // bin_ms)
    edges = np.minimum(np.arange(n_bins + 1, dtype=np.int64) * bin_ms, window_ms).astype(np.float64)
    mid_hour = ((base_ms % 86_400_000 + (edges[:-1] + edges[1:]) / 2.0) / 3_600_000.0) % 24.0
    hourly = np.asarray(HOURLY_TRAFFIC)
    density = np.interp(mid_hour, np.arange(24) + 0.5, hourly, period=24.0)
    cum = np.concatenate([[0.0], np.cumsum(density * np.diff(edges))])
    return edges, cum


def _successors(world: _World, intent: np.ndarray, cur: np.ndarray, interest: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Next items of sessions that follow a successor of their current item.

    A successor outside the session's interest is often passed over for another one.
    """
    first = world.successor(intent, cur, rng.random(len(cur)))
    off = np.flatnonzero((world.cluster[first] != interest) & (rng.random(len(cur)) < P_STICK))
    if len(off):
        second = world.successor(intent[off], cur[off], rng.random(len(off)))
        keep = world.cluster[second] == interest[off]
        first[off[keep]] = second[keep]
    return first


def _clicks(lengths: np.ndarray, epoch: np.ndarray, world: _World, rng: np.random.Generator) -> np.ndarray:
    """Item index of every click, sessions laid out in the given order (`epoch`: each one's epoch)."""
    n_sessions = len(lengths)
    n_events = int(lengths.sum(dtype=np.int64))
    offsets = np.zeros(n_sessions, dtype=np.int64)
    np.cumsum(lengths[:-1], out=offsets[1:])
    # Walk the sessions longest first, so the ones still going at step t are a prefix.
    by_length = np.argsort(-lengths.astype(np.int64), kind="stable")
    pos = offsets[by_length]
    epoch = epoch[by_length]
    del by_length, offsets
    # still_going[t] = number of sessions with at least t clicks
    still_going = np.bincount(lengths, minlength=MAX_SESSION_LENGTH + 2)[::-1].cumsum()[::-1]

    out = np.empty(n_events, dtype=np.int32)
    cur = world.popular(rng.random(n_sessions), epoch)
    interest = world.cluster[cur]
    intent = rng.integers(0, world.successors.shape[0], size=n_sessions, dtype=np.int32)
    prev = np.full(n_sessions, -1, dtype=np.int32)
    out[pos] = cur
    thresholds = np.cumsum([P_REPEAT, P_BACK, P_SUCCESSOR, P_CLUSTER])
    max_len = int(lengths.max())

    with progress(total=n_events, desc="synth", unit="click", unit_scale=True) as bar:
        bar.update(n_sessions)
        for t in range(1, max_len):
            a = int(still_going[t + 1])
            cur, prev, interest, pos = cur[:a], prev[:a], interest[:a], pos[:a]
            intent, epoch = intent[:a], epoch[:a]
            action = np.searchsorted(thresholds, rng.random(a), side="right")
            # Stepping back needs an earlier, different item; otherwise follow a successor.
            action[(action == 1) & ((prev < 0) | (prev == cur))] = 2
            nxt = cur.copy()
            i = np.flatnonzero(action == 1)
            nxt[i] = prev[i]
            i = np.flatnonzero(action == 2)
            if len(i):
                nxt[i] = _successors(world, intent[i], cur[i], interest[i], rng)
            i = np.flatnonzero(action == 3)
            if len(i):
                nxt[i] = world.popular_in(interest[i], rng.random(len(i)), epoch[i])
            i = np.flatnonzero(action == 4)
            if len(i):
                nxt[i] = world.popular(rng.random(len(i)), epoch[i])
            # The interest follows a global jump always, other moves out of it sometimes.
            new_cluster = world.cluster[nxt]
            moves = (new_cluster != interest) & ((action == 4) | (rng.random(a) < P_DRIFT))
            interest = np.where(moves, new_cluster, interest)
            prev = np.where(nxt != cur, cur, prev)
            cur = nxt
            out[pos + t] = cur
            bar.update(a)
    return out


# --------------------------------------------------------------------------------------------------
# Writers


def _digits(values: np.ndarray, width: int) -> tuple[np.ndarray, np.ndarray]:
    """ASCII digits of non-negative ints, right-aligned in `width` columns, and which are not padding."""
    n = len(values)
    chars = np.empty((n, width), dtype=np.uint8)
    keep = np.empty((n, width), dtype=bool)
    for j in range(width):
        p = 10 ** (width - 1 - j)
        chars[:, j] = (values // p) % 10 + 48
        keep[:, j] = values >= p if j < width - 1 else True
    return chars, keep


def _width(values: np.ndarray) -> int:
    return len(str(int(values.max()))) if len(values) else 1


def _yoochoose_bytes(session: np.ndarray, item: np.ndarray, ms: np.ndarray, category: np.ndarray,
                     widths: tuple[int, int, int]) -> bytes:
    """Rows `session,2014-04-07T10:51:09.277Z,item,category\\n` as one bytes object."""
    ws, wi, wc = widths
    n = len(session)
    width = ws + 1 + 24 + 1 + wi + 1 + wc + 1
    buf = np.empty((n, width), dtype=np.uint8)
    keep = np.ones((n, width), dtype=bool)
    c = 0
    buf[:, c:c + ws], keep[:, c:c + ws] = _digits(session, ws)
    c += ws
    buf[:, c] = ord(",")
    c += 1
    day = ms // 86_400_000
    in_day = ms - day * 86_400_000
    first = int(day.min())
    dates = np.datetime_as_string(np.arange(first, int(day.max()) + 1).astype("datetime64[D]"))
    date_chars = np.frombuffer("".join(dates).encode("ascii"), dtype=np.uint8).reshape(len(dates), 10)
    buf[:, c:c + 10] = date_chars[day - first]
    buf[:, c + 10] = ord("T")
    hh, rest = np.divmod(in_day, 3_600_000)
    mm, rest = np.divmod(rest, 60_000)
    ss, milli = np.divmod(rest, 1000)
    for k, (part, digits) in enumerate(((hh, 2), (mm, 2), (ss, 2))):
        col = c + 11 + 3 * k
        buf[:, col:col + 2] = _digits(part, digits)[0]
        buf[:, col + 2] = ord(":") if k < 2 else ord(".")
    buf[:, c + 20:c + 23] = _digits(milli, 3)[0]
    buf[:, c + 23] = ord("Z")
    c += 24
    buf[:, c] = ord(",")
    c += 1
    buf[:, c:c + wi], keep[:, c:c + wi] = _digits(item, wi)
    c += wi
    buf[:, c] = ord(",")
    c += 1
    buf[:, c:c + wc], keep[:, c:c + wc] = _digits(category, wc)
    c += wc
    buf[:, c] = ord("\n")
    return buf[keep].tobytes()


def _categories_for(df: pd.DataFrame, item: np.ndarray) -> np.ndarray:
    meta = df.attrs.get("synth") if isinstance(df.attrs, dict) else None
    if not isinstance(meta, dict) or "n_items" not in meta or "seed" not in meta:
        return np.zeros(len(item), dtype=np.int64)
    ids, cats = item_categories(int(meta["n_items"]), int(meta["seed"]))
    j = np.minimum(np.searchsorted(ids, item), len(ids) - 1)
    return np.where(ids[j] == item, cats[j], 0)


def write_yoochoose(df: pd.DataFrame, path: str | os.PathLike[str]) -> None:
    """Write `df` as raw `yoochoose-clicks.dat` (no header; session,ISO time,item,category).

    Gzip-compressed when the name ends in .gz (reproducibly: no name or time in the header). The file
    appears only once complete. Categories come from the generator's clusters for frames made by
    `generate_log`, otherwise 0. Ids must be non-negative integers.
    """
    path = Path(path)
    missing = [c for c in COLUMNS if c not in df.columns]
    if missing:
        raise UserError(f"cannot write {path}: frame lacks column(s) {', '.join(missing)}")
    session = df["SessionId"].to_numpy()
    item = df["ItemId"].to_numpy()
    for name, col in (("SessionId", session), ("ItemId", item)):
        if not np.issubdtype(col.dtype, np.integer) or (len(col) and col.min() < 0):
            raise UserError(f"cannot write {path} as YooChoose clicks: {name} must be non-negative integers")
    time = df["Time"].to_numpy(dtype=np.float64)
    if len(time) and not np.isfinite(time).all():
        raise UserError(f"cannot write {path} as YooChoose clicks: Time has missing or infinite values")
    category = _categories_for(df, item)
    widths = (_width(session), _width(item), _width(category))
    n = len(df)
    try:
        with atomic_file(path, "wb") as raw:
            fh = gzip.GzipFile(filename="", mode="wb", fileobj=raw, compresslevel=6, mtime=0) \
                if path.suffix == ".gz" else raw
            try:
                with progress(total=n, desc=f"writing {path.name}", unit="row", unit_scale=True) as bar:
                    for lo in range(0, n, _CHUNK_ROWS):
                        hi = min(lo + _CHUNK_ROWS, n)
                        ms = np.rint(time[lo:hi] * 1000.0).astype(np.int64)
                        fh.write(_yoochoose_bytes(session[lo:hi], item[lo:hi], ms, category[lo:hi], widths))
                        bar.update(hi - lo)
            finally:
                if fh is not raw:
                    fh.close()
    except OSError as exc:
        raise UserError(f"cannot write {path}: {exc.strerror or exc}") from None
    log.info("wrote %s (%d clicks, YooChoose format)", path, n)


def write_tsv(df: pd.DataFrame, path: str | os.PathLike[str]) -> None:
    """Write `df` as a prepared session file (TSV with header, or Parquet by the .parquet suffix)."""
    from gru4rec.data.session_files import write_session_file

    try:
        write_session_file(df, path)
    except OSError as exc:
        raise UserError(f"cannot write {path}: {exc.strerror or exc}") from None
    log.info("wrote %s (%d clicks, session file)", path, len(df))
