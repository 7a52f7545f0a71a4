"""Replay pieces: sum tree, samplers, eviction, storage, buffer state."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.stats import chisquare

from trl_replay_ppo.replay import (
    Episode,
    EpisodeStorage,
    EvictionPolicy,
    PrioritizedSampler,
    ReplayBuffer,
    SumTree,
    UniformSampler,
)
from trl_replay_ppo.replay.sampler import PRIORITY_EPS


def episode(i: int) -> Episode:
    return Episode(
        query=torch.tensor([i, i + 1]),
        response=torch.tensor([i] * (1 + i % 3)),
        logprobs=torch.full((1 + i % 3,), -0.5 * i),
        ref_logprobs=torch.full((1 + i % 3,), -0.25 * i),
        score=float(i),
        source_scores=torch.tensor([float(i)]),
    )


def buffer(capacity=8, prioritized=False, staleness=100, reuse=4, decay=1.0, alpha=1.0, beta=1.0) -> ReplayBuffer:
    sampler = PrioritizedSampler(capacity, alpha, beta, decay) if prioritized else UniformSampler(capacity)
    return ReplayBuffer(EpisodeStorage(capacity), sampler, EvictionPolicy(staleness, reuse), seed=0)


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
    rng = np.random.default_rng(0)
    draws = tree.find(rng.uniform(0, tree.total, size=20000))
    observed = np.bincount(draws, minlength=6)
    assert chisquare(observed, weights / weights.sum() * len(draws)).pvalue > 0.01


def test_prioritized_sampler_draws_proportionally_without_duplicates():
    sampler = PrioritizedSampler(8, alpha=1.0, beta=1.0, decay=1.0)
    priorities = np.array([1.0, 1.0, 2.0, 4.0, 8.0, 0.5, 0.5, 3.0])
    sampler.add(np.arange(8), priorities, version=0)
    rng = np.random.default_rng(1)
    counts = np.zeros(8)
    for _ in range(4000):
        slots, _ = sampler.sample(1, rng, version=0)
        counts[slots] += 1
    expected = (priorities + PRIORITY_EPS) / (priorities + PRIORITY_EPS).sum() * 4000
    assert chisquare(counts, expected).pvalue > 0.01
    for _ in range(50):
        slots, _ = sampler.sample(6, rng, version=0)
        assert len(set(slots.tolist())) == 6
    assert sampler.tree.total == pytest.approx((priorities + PRIORITY_EPS).sum())  # set-aside leaves restored


def test_importance_weights_by_hand():
    sampler = PrioritizedSampler(4, alpha=0.5, beta=0.4, decay=1.0)
    priorities = np.array([1.0, 4.0, 9.0, 16.0])
    sampler.add(np.arange(4), priorities, version=0)
    slots, weights = sampler.sample(4, np.random.default_rng(0), version=0)
    keys = (priorities + PRIORITY_EPS) ** 0.5
    probs = keys / keys.sum()
    expected = (4 * probs[slots]) ** -0.4
    np.testing.assert_allclose(weights, expected / expected.max())
    assert weights.max() == 1.0 and weights[np.argmax(probs[slots])] == weights.min()


def test_staleness_decay_favours_recent_episodes_and_survives_rebase():
    sampler = PrioritizedSampler(4, alpha=1.0, beta=1.0, decay=0.5)
    sampler.add(np.array([0, 1]), np.array([1.0, 1.0]), version=0)
    sampler.add(np.array([2, 3]), np.array([1.0, 1.0]), version=2)
    leaves = sampler.tree.leaves()
    assert leaves[2] / leaves[0] == pytest.approx(4.0)  # two updates younger: 0.5 ** -2
    sampler.add(np.array([0]), np.array([1.0]), version=100)  # forces a rebase
    assert sampler.base == 100
    leaves = sampler.tree.leaves()
    assert leaves[0] / leaves[2] == pytest.approx(2.0**98)
    assert np.isfinite(sampler.tree.total)


def test_uniform_sampler_only_returns_occupied_slots():
    sampler = UniformSampler(10)
    sampler.add(np.arange(10), np.zeros(10), version=0)
    sampler.remove(np.array([0, 3, 9]))
    rng = np.random.default_rng(0)
    seen = set()
    for _ in range(200):
        slots, weights = sampler.sample(4, rng, version=0)
        assert len(set(slots.tolist())) == 4 and np.all(weights == 1)
        seen.update(slots.tolist())
    assert seen == {1, 2, 4, 5, 6, 7, 8}


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
        assert len(buf) <= 16 and len(buf.sampler) == len(buf)
        if len(buf) >= 4:
            slots, _, _ = buf.sample(4, version)
            buf.mark_replayed(slots)
            buf.update_priorities(slots, rng.random(4), version)
        buf.evict(version + 1)
        assert len(buf.sampler) == len(buf)


def test_sample_more_than_held_is_an_error():
    buf = buffer()
    buf.add([episode(0)], np.ones(1), version=0)
    with pytest.raises(ValueError, match="Cannot sample 2 episodes from a replay buffer holding 1"):
        buf.sample(2, version=0)


@pytest.mark.parametrize("prioritized", [False, True])
def test_state_dict_round_trip_is_equal_and_decoupled(prioritized):
    source = buffer(capacity=8, prioritized=prioritized, decay=0.9, alpha=0.6, beta=0.4)
    source.add([episode(i) for i in range(6)], np.arange(6, dtype=float), version=0)
    source.sample(3, version=1)
    state = source.state_dict()
    restored = buffer(capacity=8, prioritized=prioritized, decay=0.9, alpha=0.6, beta=0.4)
    restored.load_state_dict(state)
    # Same future: same draws, same episodes.
    a_slots, a_eps, a_w = source.sample(3, version=2)
    b_slots, b_eps, b_w = restored.sample(3, version=2)
    assert a_slots.tolist() == b_slots.tolist() and np.array_equal(a_w, b_w)
    assert all(torch.equal(x.response, y.response) for x, y in zip(a_eps, b_eps, strict=True))
    # Decoupled: changing the source changes neither the state nor the restored buffer.
    source.storage.episodes[0].response.add_(100)
    source.storage.version[:] = 99
    source.mark_replayed(np.arange(6))
    assert state["storage"]["episodes"][0]["response"].tolist() == [0]
    assert restored.storage.episodes[0].response.tolist() == [0]
    assert restored.storage.version.max() == 0 and restored.storage.replays.max() == 0


def test_loading_into_a_different_buffer_is_a_clear_error():
    state = buffer(capacity=8).state_dict()
    with pytest.raises(ValueError, match="capacity 8 but `replay_buffer_size` is 4"):
        buffer(capacity=4).load_state_dict(state)
    with pytest.raises(ValueError, match="same `use_priority_sampling`"):
        buffer(capacity=8, prioritized=True).load_state_dict(state)
    with pytest.raises(ValueError, match="schema version"):
        buffer(capacity=8).load_state_dict({**state, "schema_version": 99})
