"""Extra negatives: drawn proportional to support ** sample_alpha (0 uniform, 1 popularity) from a
pre-drawn buffer. (That training actually scores B + n_sample columns is in test_training.py.)"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from gru4rec.training.sampling import NegativeSampler

COUNTS = np.array([1, 2, 3, 5, 8, 13, 21, 40, 100, 7], dtype=np.float64)


def chi2_critical(df: int, z: float = 3.719) -> float:
    """Upper critical value of chi-square (Wilson-Hilferty); z = 3.719 is the 1e-4 upper normal quantile."""
    a = 2.0 / (9.0 * df)
    return df * (1.0 - a + z * math.sqrt(a)) ** 3


def draw(counts, alpha, n_sample=2000, calls=100, seed=0, cache_size=None):
    gen = torch.Generator().manual_seed(seed)
    sampler = NegativeSampler(
        torch.as_tensor(counts, dtype=torch.float64), n_sample, alpha,
        cache_size=cache_size or n_sample * 16, generator=gen,
    )
    out = torch.cat([sampler.next() for _ in range(calls)]).numpy()
    return out


def chi2_stat(observed_counts, probs):
    expected = probs * observed_counts.sum()
    return float(((observed_counts - expected) ** 2 / expected).sum())


@pytest.mark.parametrize("alpha", [0.0, 0.5, 1.0])
def test_distribution_matches_counts_pow_alpha(alpha):
    samples = draw(COUNTS, alpha)
    assert samples.min() >= 0 and samples.max() < len(COUNTS)
    observed = np.bincount(samples, minlength=len(COUNTS)).astype(np.float64)
    probs = COUNTS**alpha / (COUNTS**alpha).sum()
    stat = chi2_stat(observed, probs)
    assert stat < chi2_critical(len(COUNTS) - 1), f"chi2 {stat:.1f} for alpha={alpha}"
    # and a plain tolerance on frequencies (200,000 draws: standard error < 0.0012)
    assert np.abs(observed / observed.sum() - probs).max() < 0.006
    # the test has power: the other alphas' distributions are rejected
    for other in {0.0, 0.5, 1.0} - {alpha}:
        wrong = COUNTS**other / (COUNTS**other).sum()
        assert chi2_stat(observed, wrong) > chi2_critical(len(COUNTS) - 1)


def test_unseen_items_never_drawn_with_positive_alpha():
    counts = np.array([0, 5, 0, 1, 0, 3], dtype=np.float64)
    samples = draw(counts, 0.5, n_sample=500, calls=40)
    assert set(np.unique(samples).tolist()) <= {1, 3, 5}
    assert set(np.unique(samples).tolist()) == {1, 3, 5}


def test_last_and_first_items_reachable():
    # the cdf's ends: a single heavy first or last item must be drawn, never an index out of range
    for counts in ([1000, 1, 1], [1, 1, 1000]):
        samples = draw(np.array(counts, dtype=np.float64), 1.0, n_sample=300, calls=10)
        assert samples.max() <= 2
        heavy = int(np.argmax(counts))
        assert (samples == heavy).mean() > 0.98


def test_next_shape_buffer_refill_and_reproducibility():
    counts = torch.as_tensor(COUNTS)
    a = NegativeSampler(counts, 64, 0.5, cache_size=64 * 3, generator=torch.Generator().manual_seed(7))
    b = NegativeSampler(counts, 64, 0.5, cache_size=64 * 3, generator=torch.Generator().manual_seed(7))
    rows_a = [a.next() for _ in range(10)]  # crosses the 3-row buffer three times
    rows_b = [b.next() for _ in range(10)]
    for x, y in zip(rows_a, rows_b):
        assert x.shape == (64,) and x.dtype == torch.long
        assert torch.equal(x, y)
    # consecutive mini-batches get different negatives (also across a refill)
    assert not all(torch.equal(rows_a[0], r) for r in rows_a[1:])
    assert not torch.equal(rows_a[2], rows_a[3])


def test_zero_extra_samples():
    s = NegativeSampler(torch.as_tensor(COUNTS), 0, 0.5)
    out = s.next()
    assert out.numel() == 0 and out.dtype == torch.long


@pytest.mark.parametrize("cache_size", [16, 16 * 5])
def test_restored_sampler_continues_the_same_stream(cache_size):
    """state_dict() captures the generator before the last refill plus the read position, so a
    restored sampler redraws the same buffer and continues where the original stopped."""
    s = NegativeSampler(torch.as_tensor(COUNTS), 16, 0.5, cache_size=cache_size, generator=torch.Generator().manual_seed(3))
    for _ in range(7):
        s.next()
    state = s.state_dict()
    expected = [s.next() for _ in range(12)]  # crosses at least one refill
    s2 = NegativeSampler(torch.as_tensor(COUNTS), 16, 0.5, cache_size=cache_size, generator=torch.Generator())
    s2.load_state_dict(state)
    assert all(torch.equal(a, b) for a, b in zip((s2.next() for _ in range(12)), expected))

@pytest.mark.parametrize("kind", ["uniform", "integer counts", "square roots", "one giant", "zipf", "with zeros"])
def test_compiled_alias_table_is_the_loop_bit_for_bit(kind):
    """The kernel (0.1 s for 1.8M items) must give the reference loop's table exactly: training draws
    the same negatives from the same seed whichever built it."""
    from gru4rec.training import native
    from gru4rec.training.sampling import alias_table, alias_table_loop

    if native.library() is None:
        pytest.skip("no C compiler here: alias_table is the loop itself")
    rng = np.random.default_rng(["uniform", "integer counts", "square roots", "one giant", "zipf", "with zeros"].index(kind))
    for _ in range(200):
        n = int(rng.integers(1, 300))
        weights = {
            "uniform": np.ones(n),
            "integer counts": rng.integers(1, 6, n).astype(np.float64),  # rational: exact ties with 1.0 happen
            "square roots": rng.integers(1, 10, n).astype(np.float64) ** 0.5,
            "one giant": np.r_[rng.random(n), 1e6],
            "zipf": rng.zipf(1.4, n).astype(np.float64) ** 0.75,
            "with zeros": rng.integers(0, 3, n).astype(np.float64),
        }[kind]
        if weights.sum() == 0:
            continue
        prob, alias = alias_table(weights)
        want_prob, want_alias = alias_table_loop(weights * (len(weights) / weights.sum()))
        np.testing.assert_array_equal(prob, want_prob)
        np.testing.assert_array_equal(alias, want_alias)


def test_alias_table_without_the_kernels_is_the_loop(monkeypatch):
    from gru4rec.training import native
    from gru4rec.training.sampling import alias_table

    weights = COUNTS ** 0.5
    expected = alias_table(weights)
    monkeypatch.setattr(native, "library", lambda: None)
    got = alias_table(weights)
    np.testing.assert_array_equal(got[0], expected[0])
    np.testing.assert_array_equal(got[1], expected[1])


@pytest.mark.parametrize(("n_sample", "slice_"), [(7, 20), (2048, 1 << 20), (5, 1)])
def test_refill_in_slices_draws_the_one_shot_stream(monkeypatch, n_sample, slice_):
    """The buffer is refilled a slice at a time to bound memory; the negatives must be exactly those of
    one draw of the whole buffer (the same seed gives the same training)."""
    from gru4rec.training import sampling

    counts = torch.as_tensor(np.arange(1, 301) ** 1.5, dtype=torch.float64)
    monkeypatch.setattr(sampling, "REFILL_SLICE", slice_)
    sampler = sampling.NegativeSampler(counts, n_sample, 0.6, cache_size=n_sample * 33, generator=torch.Generator().manual_seed(3))
    got = torch.stack([sampler.next() for _ in range(40)])  # the buffer holds 33 rows: one refill on the way
    gen = torch.Generator().manual_seed(3)
    want = []
    for _ in range(2):
        bucket = torch.randint(300, (33, n_sample), generator=gen)
        keep = torch.rand((33, n_sample), generator=gen) < sampler.prob[bucket]
        want.append(torch.where(keep, bucket, sampler.alias[bucket]))
    torch.testing.assert_close(got, torch.cat(want)[:40], rtol=0, atol=0)
