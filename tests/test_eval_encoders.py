"""`eval.encoders.spread_groups`: where feature extraction spreads its work, from an explicit
`ParallelLayout` value (images over the vision tower's DP group, captions over the teacher's DP group
when the teacher is split tensor-parallel, over every rank when the text tower is whole on each)."""
from __future__ import annotations

from types import SimpleNamespace

from dist_utils import run_workers


def _spread_worker(rank, world):
    import torch.distributed as dist

    from llm2clip_nemo.eval.encoders import spread_groups
    from llm2clip_nemo.models.stock_clip import StockCLIP
    from llm2clip_nemo.runtime.parallel import init_distributed

    init_distributed()
    explicit = SimpleNamespace(vision_dp_group="vision-dp", dp_group="teacher-dp")
    teacher_model = SimpleNamespace(groups=SimpleNamespace(vision_dp_group="own-world", dp_group="own-dp"))
    stock = StockCLIP.__new__(StockCLIP)  # a stock CLIP: its text tower is whole on every rank
    return [spread_groups(teacher_model, explicit), spread_groups(teacher_model), spread_groups(stock, explicit),
            spread_groups(stock) == (dist.group.WORLD, dist.group.WORLD)]


def test_spread_groups_take_the_explicit_layout_then_the_models_own():
    expected = [("vision-dp", "teacher-dp"), ("own-world", "own-dp"), ("vision-dp", "vision-dp"), True]
    assert run_workers(_spread_worker, 2) == [expected, expected]


def test_one_process_spreads_nothing():
    from llm2clip_nemo.eval.encoders import spread_groups

    explicit = SimpleNamespace(vision_dp_group="vision-dp", dp_group="teacher-dp")
    assert spread_groups(SimpleNamespace(groups=explicit), explicit) == (None, None)
