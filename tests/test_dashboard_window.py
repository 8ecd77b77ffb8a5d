"""The dashboard's figures over the last minutes: window and quantile math, plain calls."""

from __future__ import annotations

import random

import pytest

from slm_server.admin.sampler import BOUNDS, Sampler, sample_of
from slm_server.admin.window import (
    ModelCounts,
    Sample,
    Window,
    difference,
    figures,
    quantile,
)
from slm_server.router.metrics.histogram import Histogram
from slm_server.router.metrics.tallies import RequestTallies

CHAT = "/v1/chat/completions"


def counts(
    requests: int = 0,
    duration: tuple[int, ...] = (0, 0, 0, 0),
    first_byte: tuple[int, ...] = (0, 0, 0, 0),
    tokens: int = 0,
) -> ModelCounts:
    """Counts over the bounds (1, 2, 4) and +Inf."""
    return ModelCounts(requests, duration, first_byte, tokens)


def test_a_quantile_is_interpolated_within_its_bucket() -> None:
    bounds = (1.0, 2.0, 4.0)
    # Ten observations in (1, 2]: the median is halfway through that bucket.
    assert quantile(0.5, bounds, (0, 10, 10, 10)) == pytest.approx(1.5)
    # Five in (0, 1], five in (2, 4]: the 95th is 90% of the way through (2, 4].
    assert quantile(0.95, bounds, (5, 5, 10, 10)) == pytest.approx(3.8)


def test_the_first_bucket_starts_at_zero() -> None:
    assert quantile(0.5, (1.0, 2.0), (4, 4, 4)) == pytest.approx(0.5)


def test_a_quantile_above_every_bound_is_the_highest_bound_as_prometheus_says() -> None:
    assert quantile(0.95, (1.0, 2.0), (1, 1, 10)) == 2.0


def test_no_observations_have_no_quantile() -> None:
    assert quantile(0.5, (1.0, 2.0), (0, 0, 0)) is None


def test_the_quantile_falls_in_the_bucket_of_the_true_value() -> None:
    rng = random.Random(7)
    histogram = Histogram(BOUNDS)
    values = sorted(rng.lognormvariate(-1, 1.5) for _ in range(1000))
    for value in values:
        histogram.observe(value)
    cumulative = [int(count) for _, count in histogram.buckets()]
    for q in (0.5, 0.95):
        true = values[int(q * len(values)) - 1]
        upper = next(b for b in BOUNDS if b >= true)
        lower = max((b for b in BOUNDS if b < true), default=0.0)
        estimate = quantile(q, BOUNDS, cumulative)
        assert estimate is not None and lower <= estimate <= upper


def test_figures_are_rates_over_the_span_and_quantiles_of_the_requests() -> None:
    counted = counts(requests=10, duration=(0, 10, 10, 10), first_byte=(4, 4, 4, 4), tokens=600)
    result = figures(counted, (1.0, 2.0, 4.0), span_s=60)
    assert result.requests_per_min == pytest.approx(10)
    assert result.tokens_per_s == pytest.approx(10)
    assert result.latency_p50_s == pytest.approx(1.5)
    assert result.ttfb_p50_s == pytest.approx(0.5)


def test_no_span_gives_no_rate() -> None:
    result = figures(counts(), (1.0, 2.0, 4.0), span_s=0)
    assert result.requests_per_min is None and result.tokens_per_s is None
    assert result.latency_p50_s is None


def test_only_what_was_counted_within_the_window_counts() -> None:
    window = Window(length_s=300, every_s=5)
    window.add(Sample(0, {"m": counts(requests=100, duration=(0, 100, 100, 100))}))
    window.add(Sample(100, {"m": counts(requests=110, duration=(0, 110, 110, 110))}))
    now = Sample(400, {"m": counts(requests=113, duration=(0, 110, 113, 113), tokens=30)})
    result = window.figures(now, (1.0, 2.0, 4.0))["m"]
    # Since the sample at 100 s (the one at 0 s is older than the window): 3 requests,
    # all in (2, 4], over 300 s.
    assert result.span_s == 300
    assert result.requests_per_min == pytest.approx(3 / 300 * 60)
    assert result.latency_p50_s == pytest.approx(3.0)
    assert result.tokens_per_s == pytest.approx(30 / 300)


def test_tallies_made_anew_count_from_zero_not_below() -> None:
    before = counts(requests=50, duration=(50, 50, 50, 50), tokens=500)
    after = counts(requests=2, duration=(2, 2, 2, 2), tokens=20)
    assert difference(after, before) == after


def test_a_model_added_since_the_baseline_counts_all_its_requests() -> None:
    window = Window(length_s=300, every_s=5)
    window.add(Sample(0, {"old": counts()}))
    now = Sample(60, {"old": counts(), "new": counts(requests=6, duration=(6, 6, 6, 6))})
    assert window.figures(now, (1.0, 2.0, 4.0))["new"].requests_per_min == pytest.approx(6)


def test_the_window_keeps_a_bounded_number_of_samples_spaced_apart() -> None:
    window = Window(length_s=300, every_s=5)
    assert window.add(Sample(0, {}))
    assert not window.add(Sample(1, {}))  # too soon after the last one kept
    for second in range(5, 10_000, 5):
        window.add(Sample(second, {}))
    assert len(window) <= 300 // 5 + 2
    baseline = window.baseline(9995)
    assert baseline is not None and baseline.at == 9995 - 300


def test_without_a_sample_in_the_window_nothing_is_measured() -> None:
    window = Window(length_s=300, every_s=5)
    window.add(Sample(0, {"m": counts()}))
    now = Sample(1000, {"m": counts(requests=5, duration=(5, 5, 5, 5))})
    result = window.figures(now, (1.0, 2.0, 4.0))["m"]
    assert result.span_s == 0 and result.requests_per_min is None


def test_a_sample_sums_a_models_endpoints_and_leaves_out_unknown_models() -> None:
    tallies = RequestTallies(["m-chat", "m-embed"])
    chat = tallies.slot("m-chat", CHAT)
    chat.duration.observe(0.3)
    chat.first_byte.observe(0.02)
    chat.completion_tokens += 12
    tallies.slot("m-chat", "/v1/completions").duration.observe(3.0)
    tallies.slot("unknown", CHAT).duration.observe(1.0)  # counted under "-"
    sample = sample_of(tallies, at=7.0)
    assert set(sample.models) == {"m-chat", "m-embed"}
    chat_counts = sample.models["m-chat"]
    assert chat_counts.requests == 2
    assert chat_counts.completion_tokens == 12
    assert chat_counts.duration[-1] == 2 and chat_counts.first_byte[-1] == 1
    assert sample.models["m-embed"].requests == 0


def test_the_sampler_reads_the_tallies_it_is_given_now() -> None:
    clock = iter([0.0, 10.0, 20.0]).__next__
    tallies = [RequestTallies(["m"])]
    sampler = Sampler(lambda: tallies[0], Window(300, 5), clock)
    tallies[0].slot("m", CHAT).duration.observe(0.1)
    assert sampler.take().models["m"].requests == 1
    tallies[0] = RequestTallies(["m", "n"])  # replaced, as a config reload may do
    assert set(sampler.take().models) == {"m", "n"}
