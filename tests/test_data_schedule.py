"""The stream's shard schedule alone (no shard is read): Weyl mixing holds shares per prefix, epoch
lists split disjointly over ranks x workers, too few shards is refused by name."""
from __future__ import annotations

import pytest

from llm2clip_nemo.data.schedule import ShardSchedule
from llm2clip_nemo.data.spec import DataSourceError, parse_sources


def test_weyl_mix_keeps_every_prefix_within_a_few_items_of_its_share():
    # Independent draws would stray by ~sqrt(n * 0.75 * 0.25) = 43 items at n = 10000.
    sources = parse_sources("a/{0..3}.tar::b/{0..1}.tar", None, False, "1::3")
    for seed in (0, 1):
        s = ShardSchedule(sources, seed=seed, slots=2)
        assert s.weights == [0.25, 0.75] and s.pools == [[0, 1, 2, 3], [4, 5]]
        for gw in range(4):
            u, from_b, worst = s.mix_offset(gw), 0, 0.0
            for t in range(10000):
                from_b += s.pick(u, t) == 1
                worst = max(worst, abs(from_b - 0.75 * (t + 1)))
            assert worst <= 4, (seed, gw, worst)


def test_epoch_list_repeats_by_factor_and_splits_disjointly():
    s = ShardSchedule(parse_sources("a/{0..3}.tar::b/{0..1}.tar", "1::2.5", False), seed=0, slots=2)
    assert s.weights is None and s.pools == [[0, 1, 2, 3, 4, 5]]
    order = s.epoch_shards(0)
    assert order == [5, 2, 5, 4, 5, 0, 4, 4, 1, 3]  # factor 2.5: shard 5 three times, shard 4 three times here
    parts = [s.worker_shards(0, rank, worker, 2) for rank in range(2) for worker in range(2)]
    assert parts == [[5, 5, 1], [2, 0, 3], [5, 4], [4, 4]]
    assert sorted(sum(parts, [])) == sorted(order)
    with pytest.raises(DataSourceError) as e:
        s.worker_shards(0, 0, 0, 8)
    assert str(e.value) == (
        "epoch 0 has 10 shards for 2 data slots (ranks) x 8 workers = 16 readers: some would get none. Use fewer DataLoader "
        "workers, more (smaller) shards (`llm2clip-nemo data build --samples-per-shard`), or data.resampled=true")
