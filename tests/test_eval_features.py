"""Data-parallel feature extraction: 2 gloo processes give the single-process result, in order."""
import pytest
import torch
from dist_utils import run_workers

from llm2clip_nemo.eval.features import extract_features, shard_indices

CASES = [(7, "contiguous"), (7, "strided"), (1, "contiguous"), (1, "strided"), (4, "contiguous"), (5, "strided")]


def _encode(items):
    """A deterministic per-item encoder: a row depends only on its item."""
    x = torch.tensor(items, dtype=torch.float64)[:, None]
    return torch.cat([x, x * x, torch.sin(x)], dim=1).float()


def _encode_bf16(items):
    return _encode(items).to(torch.bfloat16)


def _worker(rank, world_size):
    import torch.distributed as dist

    from llm2clip_nemo.runtime import init_distributed

    init_distributed()
    results = {}
    for n, layout in CASES:
        seen = []
        items = list(range(10, 10 + n))
        out = extract_features(items, lambda b, seen=seen: (seen.extend(b), _encode(b))[1], batch_size=2,
                               group=dist.group.WORLD, layout=layout)
        results[(n, layout)] = (out, seen)
    results["bf16"] = (extract_features(list(range(5)), _encode_bf16, batch_size=3, group=dist.group.WORLD), None)
    return results


def test_gathered_order_equals_single_process():
    by_rank = run_workers(_worker, 2)
    for n, layout in CASES:
        items = list(range(10, 10 + n))
        want = extract_features(items, _encode, batch_size=2)
        assert torch.equal(want, _encode(items))
        for rank in (0, 1):
            out, seen = by_rank[rank][(n, layout)]
            assert out.dtype == torch.float32 and torch.equal(out, want), (n, layout, rank)
            assert seen == [items[i] for i in shard_indices(n, rank, 2, layout)]  # each rank did its share only
        assert sorted(by_rank[0][(n, layout)][1] + by_rank[1][(n, layout)][1]) == items
    bf = by_rank[0]["bf16"][0]
    assert bf.dtype == torch.bfloat16 and torch.equal(bf, _encode_bf16(list(range(5))))


def test_shard_indices_cover_items_once():
    for n in (0, 1, 5, 8):
        for layout in ("contiguous", "strided"):
            shards = [shard_indices(n, r, 3, layout) for r in range(3)]
            assert sorted(i for s in shards for i in s) == list(range(n))
    assert shard_indices(7, 1, 2, "contiguous") == [4, 5, 6]
    assert shard_indices(7, 1, 2, "strided") == [1, 3, 5]
    with pytest.raises(ValueError, match="layout='blocks': choose 'contiguous' or 'strided'"):
        shard_indices(3, 0, 1, "blocks")


def test_batch_fn_shape_is_checked():
    with pytest.raises(ValueError, match=r"batch_fn returned shape \(1, 3\) for 2 items"):
        extract_features([1, 2], lambda b: _encode(b[:1]), batch_size=2)
