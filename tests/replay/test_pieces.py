"""Replay pieces: sum tree, samplers (with unbiased weights), eviction, storage, buffer state."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.stats import chisquare

from trl_replay_ppo.core.episodes import Episode
from trl_replay_ppo.replay import (
    EpisodeStorage,
    EvictionPolicy,
    LinearSchedule,
    PrioritizedSampler,
    ReplayBuffer,
    SumTree,
    UniformSampler,
)
from trl_replay_ppo.replay.experience import effective_sample_size
from trl_replay_ppo.replay.sampler import PRIORITY_EPS

pytestmark = pytest.mark.trl112  # also runs in the TRL 1.12 job


def episode(i: int) -> Episode:
    return Episode(
        query=torch.tensor([i, i + 1]),
        response=torch.tensor([i] * (1 + i % 3)),
        logprobs=torch.full((1 + i % 3,), -0.5 * i),
        ref_logprobs=torch.full((1 + i % 3,), -0.25 * i),
        score=float(i),
        source_scores=torch.tensor([float(i)]),
    )


def buffer(capacity=8, prioritized=False, staleness=100, reuse=4, decay=1.0, alpha=1.0) -> ReplayBuffer:
    sampler = PrioritizedSampler(capacity, alpha, decay) if prioritized else UniformSampler()
    return ReplayBuffer(EpisodeStorage(capacity), sampler, EvictionPolicy(staleness, reuse), seed=0)


def corrected_shares(keys: list[float], n: int, beta: float, draws: int = 20000) -> np.ndarray:
    """Each item's share of the importance-weighted replayed rows, over many draws of ``n`` (Monte Carlo)."""
    buf = buffer(capacity=len(keys), prioritized=True)
    buf.add([episode(i) for i in range(len(keys))], np.array(keys, dtype=float), version=0)
    totals = np.zeros(len(keys))
    for _ in range(draws // n):
        slots, _, weights = buf.sample(n, beta=beta)
        np.add.at(totals, slots, weights)
    return totals / totals.sum()


def test_sum_tree_totals_and_prefix_search():
    tree = SumTree(5)
    tree.update(np.arange(5), np.array([1.0, 2.0, 3.0, 4.0, 0.0]))
    assert tree.total == 10.0
    assert tree.find(np.array([0.0, 0.99, 1.0, 2.99, 3.0, 5.99, 6.0, 9.99])).tolist() == [0, 0, 1, 1, 2, 2, 3, 3]
    tree.update(np.array([1]), np.array([0.0]))
    assert tree.total == 8.0
    tree.rebuild()
    assert tree.total == 8.0 and tree.leaves().tolist() == [1.0, 0.0, 3.0, 4.0, 0.0]


def test_sum_tree_samples_proportionally():
    tree = SumTree(6)
    weights = np.array([1.0, 2.0, 3.0, 4.0, 5.0, 5.0])
    tree.update(np.arange(6), weights)
    draws = tree.find(np.random.default_rng(0).uniform(0, tree.total, size=20000))
    assert chisquare(np.bincount(draws, minlength=6), weights / weights.sum() * len(draws)).pvalue > 0.01


def test_prioritized_draws_are_proportional_with_replacement():
    priorities = np.array([1.0, 1.0, 2.0, 4.0, 8.0, 0.5, 0.5, 3.0])
    buf = buffer(capacity=8, prioritized=True)
    buf.add([episode(i) for i in range(8)], priorities, version=0)
    counts = np.zeros(8)
    for _ in range(500):
        slots, _, _ = buf.sample(8)
        np.add.at(counts, slots, 1)  # a slot drawn twice counts twice
    expected = (priorities + PRIORITY_EPS) / (priorities + PRIORITY_EPS).sum() * counts.sum()
    assert chisquare(counts, expected).pvalue > 0.01


def test_corrected_shares_are_unbiased_by_hand():
    # keys [6, 1, 1, 1], n = 2, beta = 1: P = [2/3, 1/9, 1/9, 1/9], weights (N P)^-1 = [3/8, 9/4, 9/4, 9/4];
    # expected counts n P times weights give every item n / N: a share of 1/4 each.
    np.testing.assert_allclose(corrected_shares([6, 1, 1, 1], n=2, beta=1.0), [0.25] * 4, atol=0.01)


def test_rare_successes_get_their_true_share():
    # 13 successes among 128 episodes (a rate of 0.102) with priority 0.9, failures 0.01; 32 rows per draw.
    keys = [0.9] * 13 + [0.01] * 115
    shares = corrected_shares(keys, n=32, beta=1.0, draws=64000)
    assert shares[:13].sum() == pytest.approx(13 / 128, abs=0.01)


def test_importance_weights_by_hand_have_expectation_one():
    buf = buffer(capacity=4, prioritized=True, alpha=0.5)
    priorities = np.array([1.0, 4.0, 9.0, 16.0])
    buf.add([episode(i) for i in range(4)], priorities, version=0)
    slots, _, weights = buf.sample(4, beta=0.4)
    probabilities = (priorities + PRIORITY_EPS) ** 0.5 / ((priorities + PRIORITY_EPS) ** 0.5).sum()
    raw = (4 * probabilities) ** -0.4
    np.testing.assert_allclose(weights, raw[slots] / (probabilities * raw).sum())
    draws = [buf.sample(4, beta=0.4)[2] for _ in range(3000)]
    assert np.mean(draws) == pytest.approx(1.0, abs=0.02)


def test_one_tiny_priority_does_not_crush_the_other_weights():
    buf = buffer(capacity=4, prioritized=True)
    buf.add([episode(i) for i in range(4)], np.array([1e-3, 1.0, 1.0, 1.0]), version=0)
    for _ in range(20):
        slots, _, weights = buf.sample(4, beta=1.0)
        assert weights[slots != 0] == pytest.approx(0.75, rel=1e-3)  # (N P)^-1 with P ~ 1/3, whatever else is drawn


def test_effective_sample_size_by_hand():
    assert effective_sample_size(np.ones(4)) == 1.0
    assert effective_sample_size(np.array([3.0, 1.0])) == pytest.approx(16 / 20)
    assert effective_sample_size(np.array([1.0, 0.0, 0.0, 0.0])) == pytest.approx(0.25)
    assert effective_sample_size(torch.tensor([1.0, 1.0, 0.0, 2.0])) == pytest.approx(16 / 24)
    assert effective_sample_size(np.zeros(3)) == 0.0  # every token masked: nothing effective


def test_non_finite_priorities_are_skipped_and_counted():
    buf = buffer(capacity=8, prioritized=True)
    slots = buf.add([episode(i) for i in range(3)], np.array([1.0, np.nan, 2.0]), version=0)
    assert len(slots) == 2 and len(buf) == 2 and buf.nonfinite_priorities == 1
    buf.update_priorities(slots, np.array([np.inf, 5.0]))
    assert buf.nonfinite_priorities == 2
    assert buf.sampler.priority[slots].tolist() == [1.0, 5.0]  # the inf one kept its previous priority
    assert np.isfinite(buf.sampler.tree.total)
    drawn, _, weights = buf.sample(4)
    assert np.isfinite(weights).all() and set(drawn.tolist()) <= set(slots.tolist())
    assert buf.stats(1)["buffer/nonfinite_priorities"] == 2


def test_staleness_decay_favours_recent_episodes_and_survives_rebase():
    buf = buffer(capacity=4, prioritized=True, decay=0.5)
    buf.add([episode(0), episode(1)], np.array([1.0, 1.0]), version=0)
    buf.add([episode(2), episode(3)], np.array([1.0, 1.0]), version=2)
    leaves = buf.sampler.tree.leaves()
    assert leaves[2] / leaves[0] == pytest.approx(4.0)  # two updates younger: 0.5 ** -2
    buf.add([episode(4)], np.array([1.0]), version=100)  # overwrites slot 0 and forces a rebase
    assert buf.sampler.base == 100
    leaves = buf.sampler.tree.leaves()
    assert leaves[0] / leaves[2] == pytest.approx(2.0**98)
    assert np.isfinite(buf.sampler.tree.total)


@pytest.mark.parametrize("decay", [1e-300, 5e-324])
def test_a_tiny_staleness_decay_underflows_old_keys_without_a_nan_weight(decay):
    buf = buffer(capacity=8, prioritized=True, decay=decay, alpha=0.6)
    for version in range(4):  # each update's episodes push the older keys down by decay ** alpha < 1e-180
        buf.add([episode(2 * version), episode(2 * version + 1)], np.array([1.0, 3.0]), version=version)
        slots, _, weights = buf.sample(4, beta=0.4)
        assert np.isfinite(weights).all() and (weights > 0).all()
        assert set(buf.storage.version[slots].tolist()) == {version}
    assert (buf.sampler.tree.leaves()[:4] == 0).all()  # two updates old: zero mass, stored but never drawn
    assert len(buf) == 8


def test_uniform_sampler_draws_distinct_stored_episodes_with_weight_one():
    buf = buffer(capacity=10)
    buf.add([episode(i) for i in range(10)], np.zeros(10), version=0)
    buf.storage.remove(np.array([0, 3, 9]))
    seen = set()
    for _ in range(200):
        slots, _, weights = buf.sample(4)
        assert len(set(slots.tolist())) == 4 and np.all(weights == 1)
        seen.update(slots.tolist())
    assert seen == {1, 2, 4, 5, 6, 7, 8}
    assert buf.stats(0).keys().isdisjoint({"buffer/priority_mean"})  # no NaN metric for a feature that is off


def test_linear_schedule():
    schedule = LinearSchedule(0.4, 1.0, 10)
    assert [schedule(s) for s in (0, 5, 10, 20)] == pytest.approx([0.4, 0.7, 1.0, 1.0])


def test_eviction_by_age_reuse_and_capacity():
    buf = buffer(capacity=6, staleness=3, reuse=2)
    buf.add([episode(i) for i in range(4)], np.ones(4), version=0)
    buf.add([episode(i) for i in range(4, 6)], np.ones(2), version=2)
    buf.mark_replayed(np.array([4, 4]))
    buf.evict(version=3)
    assert buf.storage.valid.tolist() == [True, True, True, True, False, True]
    assert buf.evicted == {"stale": 0, "reuse": 1, "fifo": 0}
    buf.evict(version=4)  # generated at 0, now 4 updates old > 3
    assert buf.storage.valid.tolist() == [False, False, False, False, False, True]
    assert buf.evicted["stale"] == 4
    buf.add([episode(i) for i in range(6, 12)], np.ones(6), version=4)  # ring wraps: slot 5 is overwritten
    assert len(buf) == 6 and buf.evicted["fifo"] == 1
    assert [e.score for e in buf.storage.get(np.arange(6))] == [6.0, 7.0, 8.0, 9.0, 10.0, 11.0]


@pytest.mark.parametrize("prioritized", [False, True])
def test_buffer_never_exceeds_capacity(prioritized):
    buf = buffer(capacity=16, prioritized=prioritized)
    rng = np.random.default_rng(0)
    for version in range(40):
        count = int(rng.integers(1, 9))
        buf.add([episode(i) for i in range(count)], rng.random(count), version)
        assert len(buf) <= 16
        if len(buf) >= 4:
            slots, _, _ = buf.sample(4)
            buf.mark_replayed(slots)
            buf.update_priorities(slots, rng.random(4))
        buf.evict(version + 1)
        if prioritized:  # only stored episodes carry sampling mass
            assert np.all(buf.sampler.tree.leaves()[~buf.storage.valid] == 0)


def test_sample_more_than_held_is_an_error():
    buf = buffer()
    buf.add([episode(0)], np.ones(1), version=0)
    with pytest.raises(ValueError, match="Cannot draw 2 distinct episodes from a storage holding 1"):
        buf.sample(2)


@pytest.mark.parametrize("prioritized", [False, True])
def test_state_dict_round_trip_is_equal_and_decoupled(prioritized):
    source = buffer(capacity=8, prioritized=prioritized, decay=0.9, alpha=0.6)
    source.add([episode(i) for i in range(6)], np.arange(6, dtype=float), version=0)
    source.sample(3)
    state = source.state_dict()
    restored = buffer(capacity=8, prioritized=prioritized, decay=0.9, alpha=0.6)
    restored.load_state_dict(state)
    a_slots, a_eps, a_w = source.sample(3, beta=0.5)  # same future: same draws, same episodes
    b_slots, b_eps, b_w = restored.sample(3, beta=0.5)
    assert a_slots.tolist() == b_slots.tolist() and np.array_equal(a_w, b_w)
    assert all(torch.equal(x.response, y.response) for x, y in zip(a_eps, b_eps, strict=True))
    source.storage.episodes[0].response.add_(100)  # decoupled: changing the source changes neither copy
    source.storage.version[:] = 99
    source.mark_replayed(np.arange(6))
    assert state["storage"]["episodes"][0]["response"].tolist() == [0]
    assert restored.storage.episodes[0].response.tolist() == [0]
    assert restored.storage.version.max() == 0 and restored.storage.replays.max() == 0


def test_loading_into_a_different_buffer_is_a_clear_error():
    state = buffer(capacity=8).state_dict()
    with pytest.raises(ValueError, match="saved storage has capacity 8, this one 4"):
        buffer(capacity=4).load_state_dict(state)
    with pytest.raises(ValueError, match="saved buffer used UniformSampler, this one PrioritizedSampler"):
        buffer(capacity=8, prioritized=True).load_state_dict(state)
    with pytest.raises(ValueError, match="schema version"):
        buffer(capacity=8).load_state_dict({**state, "schema_version": 1})
