"""engine.TrainEngine and engine.optim: LR schedule values per stage, parameter groups, gradient
accumulation, the finite-loss skip agreed over 2 gloo ranks, and an exact resume from the payload."""
from __future__ import annotations

import pytest
import torch
from dist_utils import run_workers

from llm2clip_nemo.config import ConfigError, load_config
from llm2clip_nemo.engine import OptimConfig, TrainEngine, lr_at, param_groups


def _stage_optim(stage: str) -> OptimConfig:
    if stage == "pretrain_tiny":
        from llm2clip_nemo.recipes.train_clip import TrainCLIPConfig

        return load_config(TrainCLIPConfig, "pretrain_tiny", []).model.optim
    from llm2clip_nemo.recipes.caption_contrastive import CaptionContrastiveConfig

    return load_config(CaptionContrastiveConfig, "caption_contrastive_tiny", []).model.optim


# (config, max_steps, step, lr): pretrain_tiny = lr 1e-3, warmup 20, cosine to 5% (min_lr_ratio 0.05);
# caption_contrastive_tiny = lr 1e-3, warmup 3, cosine to 0.
SCHEDULE = [
    ("pretrain_tiny", 300, 0, 1e-3 * 1 / 20), ("pretrain_tiny", 300, 9, 1e-3 * 10 / 20),
    ("pretrain_tiny", 300, 19, 1e-3), ("pretrain_tiny", 300, 20, 1e-3),
    ("pretrain_tiny", 300, 160, 1e-3 * (0.05 + 0.95 * 0.5)),  # t = 140 / 280 = 0.5: cos(pi/2) = 0
    ("pretrain_tiny", 300, 300, 1e-3 * 0.05), ("pretrain_tiny", 300, 999, 1e-3 * 0.05),
    ("caption_contrastive_tiny", 63, 0, 1e-3 / 3), ("caption_contrastive_tiny", 63, 2, 1e-3),
    ("caption_contrastive_tiny", 63, 33, 1e-3 * 0.5),  # t = 30 / 60
    ("caption_contrastive_tiny", 63, 48, 1e-3 * 0.5 * (1 - 0.5 ** 0.5)),  # t = 45 / 60 = 0.75: cos(3pi/4) = -sqrt(1/2)
    ("caption_contrastive_tiny", 63, 63, 0.0),
]


@pytest.mark.parametrize("stage,max_steps,step,want", SCHEDULE)
def test_lr_schedule_values_equal_the_formula_for_both_stages(stage, max_steps, step, want):
    assert lr_at(step, _stage_optim(stage), max_steps) == pytest.approx(want, rel=1e-12, abs=1e-18)


def test_linear_and_constant_schedules_and_stage1_defaults():
    lin = OptimConfig(lr=2.0, warmup_steps=0, schedule="linear", min_lr_ratio=0.1)
    assert [lr_at(s, lin, 100) for s in (0, 25, 100)] == pytest.approx([2.0, 2.0 * (0.1 + 0.9 * 0.75), 0.2])
    from llm2clip_nemo.models.caption_contrastive_config import CaptionContrastiveModelConfig

    stage1 = CaptionContrastiveModelConfig().optim  # warmup 300 then constant, as before the engine
    assert (stage1.eps, stage1.betas, stage1.weight_decay, stage1.grad_clip) == (1e-8, [0.9, 0.999], 0.0, 1.0)
    assert [lr_at(s, stage1, 10_000) for s in (0, 299, 300, 9_999)] == pytest.approx([2e-4 / 300, 2e-4, 2e-4, 2e-4])
    with pytest.raises(ConfigError, match=r"^model.optim.schedule='step': choose cosine, linear, constant.$"):
        OptimConfig(schedule="step").validate()
    with pytest.raises(ConfigError, match=r"^model.optim.betas=\[0.9\]: give two values in \[0, 1\)"):
        OptimConfig(betas=[0.9]).validate()


def test_param_groups_layer_decay_and_no_decay():
    from llm2clip_nemo.models.network import layer_id

    shapes = {"vision.patch_embed.weight": (4, 3), "vision.decoder.layers.0.mlp.weight": (4, 4),
              "vision.decoder.layers.1.mlp.weight": (4, 4), "vision.decoder.layers.1.mlp.bias": (4,),
              "vision.final_layernorm.weight": (4, 4), "adapter.proj.weight": (2, 4), "loss.logit_scale": ()}
    named = [(n, torch.nn.Parameter(torch.zeros(s))) for n, s in shapes.items()]
    cfg = OptimConfig(weight_decay=0.2, layer_decay=0.5)
    groups = param_groups(named, cfg, lambda n: layer_id(n, 2), num_layers=2)
    got = [(g["names"], g["weight_decay"], g["lr_scale"]) for g in groups]
    assert got == [(["vision.patch_embed.weight"], 0.2, 0.125),  # stem: 0.5^3
                   (["vision.decoder.layers.0.mlp.weight"], 0.2, 0.25),
                   (["vision.decoder.layers.1.mlp.weight"], 0.2, 0.5),
                   (["vision.decoder.layers.1.mlp.bias"], 0.0, 0.5),
                   (["adapter.proj.weight"], 0.2, 1.0),
                   (["vision.final_layernorm.weight", "loss.logit_scale"], 0.0, 1.0)]


def _engine(model, **kw):
    cfg = kw.pop("cfg", OptimConfig(lr=0.1, warmup_steps=0, schedule="constant", grad_clip=0.0, weight_decay=0.0))
    return TrainEngine(model, cfg, 10, **kw)


def test_two_micro_batches_step_like_one_batch_of_both():
    torch.manual_seed(0)
    x, y = torch.randn(8, 3), torch.randn(8, 2)
    ref, acc = torch.nn.Linear(3, 2), torch.nn.Linear(3, 2)
    acc.load_state_dict(ref.state_dict())
    e1, e2 = _engine(ref), _engine(acc, micro_batches=2)
    mse = torch.nn.functional.mse_loss
    r = e1.train_step((x, y), lambda b: mse(ref(b[0]), b[1]), samples=8)
    a = e2.train_step((x[:4], y[:4]), lambda b: mse(acc(b[0]), b[1]), samples=4)
    assert (r.stepped, a.stepped, e2.step) == (True, False, 0)
    b = e2.train_step((x[4:], y[4:]), lambda b: mse(acc(b[0]), b[1]), samples=4)
    assert (b.stepped, b.step, e2.step) == (True, 0, 1)
    for p, q in zip(ref.parameters(), acc.parameters()):
        torch.testing.assert_close(q, p, rtol=1e-6, atol=1e-7)
    assert e2.loss_log[0][1] == pytest.approx((a.loss.item() + b.loss.item()) / 2)
    assert set(b.metrics) == {"loss", "lr", "samples_per_s"} and b.metrics["lr"] == 0.1


class _Meter:
    def __init__(self):
        self.calls = []

    def update(self, samples, seconds):
        self.calls.append(samples)
        return {"samples_per_s_per_device": 1.5, "mfu": None}


def test_throughput_object_gets_each_steps_samples_and_its_values_are_logged():
    lin, meter = torch.nn.Linear(3, 1), _Meter()
    eng = _engine(lin, micro_batches=2, throughput=meter)
    outs = [eng.train_step(None, lambda b: lin(torch.ones(5, 3)).sum(), samples=5) for _ in range(4)]
    assert meter.calls == [10, 10]
    assert outs[1].metrics["samples_per_s_per_device"] == 1.5 and "mfu" not in outs[1].metrics
    assert outs[0].metrics == {}


def _lin_loss(batch):
    lin, x, extra = batch
    return lin(x).sum() + extra


def _skip_worker(rank, world):
    import torch.distributed as dist

    dist.init_process_group("gloo")
    out = []
    for limit in (5, 0):
        torch.manual_seed(0)
        lin = torch.nn.Linear(2, 1)
        cfg = OptimConfig(lr=0.1, warmup_steps=0, schedule="constant", grad_clip=1.0, max_nonfinite_steps=limit)
        eng = TrainEngine(lin, cfg, 10, dp_group=dist.group.WORLD)
        x = torch.ones(1, 2)
        eng.train_step((lin, x, 0.0), _lin_loss, samples=1)
        before = [p.detach().clone() for p in lin.parameters()]
        bad = float("nan") if rank == 1 else 0.0  # only rank 1 sees a NaN
        try:
            res = eng.train_step((lin, x, bad), _lin_loss, samples=1)
        except RuntimeError as e:
            out.append(str(e))
            continue
        unchanged = all(torch.equal(a, b) for a, b in zip(before, lin.parameters()))
        out.append((res.stepped, res.metrics, eng.step, eng.nonfinite_steps, unchanged))
    return out


def test_nonfinite_loss_on_one_rank_skips_the_step_on_both_gloo_ranks():
    """Rank 1 alone has a NaN loss: both ranks skip the step (no update, step count unchanged); with
    max_nonfinite_steps=0 both raise the same error."""
    msg = ("1 steps had a NaN/inf loss (limit model.optim.max_nonfinite_steps=0): lower model.optim.lr, check the "
           "data, or resume from an earlier checkpoint.")
    assert run_workers(_skip_worker, 2) == [[(False, {"nonfinite_steps": 1.0}, 1, 1, True), msg]] * 2


class Cursor:
    """A data source whose position is the count of batches it was told about (test_slots_faults uses it too)."""

    def __init__(self):
        self.n = 0

    def track(self, batch):
        self.n += 1

    def state_dict(self):
        return {"n": self.n}

    def load_state_dict(self, s):
        self.n = s["n"]


def _noisy_run(eng, lin, steps):
    """Each loss draws torch noise (dropout-like), so an exact resume needs the RNG state too."""
    return [eng.train_step(None, lambda b: (lin(torch.randn(4, 3)) ** 2).mean(), samples=4).loss.item()
            for _ in range(steps)]


def test_payload_resume_gives_the_same_losses_weights_and_ema():
    from llm2clip_nemo.engine import EmaConfig

    ema = EmaConfig(enabled=True, decay=0.9, warmup_steps=2)
    cfg = OptimConfig(lr=0.05, warmup_steps=2, max_nonfinite_steps=0)
    torch.manual_seed(0)
    lin = torch.nn.Linear(3, 2)
    eng = TrainEngine(lin, cfg, 6, ema=ema, data=Cursor())
    ref = _noisy_run(eng, lin, 6)
    torch.manual_seed(0)
    lin2 = torch.nn.Linear(3, 2)
    first = TrainEngine(lin2, cfg, 6, ema=ema, data=Cursor())
    part = _noisy_run(first, lin2, 3)
    payload = first.state_dict()
    torch.manual_seed(123)  # another process: other init, other RNG position
    lin3 = torch.nn.Linear(3, 2)
    resumed = TrainEngine(lin3, cfg, 6, ema=ema, data=Cursor())
    resumed.load_state_dict(payload)
    assert (resumed.step, resumed.data.n) == (3, 3)
    assert part + _noisy_run(resumed, lin3, 3) == ref
    for (n, p), (_, q) in zip(lin.named_parameters(), lin3.named_parameters()):
        assert torch.equal(p, q), n
        assert torch.equal(eng.ema.shadow[n], resumed.ema.shadow[n]), n
    with pytest.raises(ValueError, match=r"^the checkpoint has an EMA but this run sets model.ema.enabled=False"):
        TrainEngine(torch.nn.Linear(3, 2), cfg, 6).load_state_dict(payload)


def test_global_batch_splits_over_ranks_and_micro_batches():
    from llm2clip_nemo.recipes.train_clip import per_rank_batch

    assert per_rank_batch(64, 2, 4) == 8
    with pytest.raises(ConfigError, match=r"^model.global_batch_size=24 is not divisible by the 2 ranks x 8 "
                                          r"micro-batches \(trainer.accumulate_grad_batches\): use a multiple of 16.$"):
        per_rank_batch(24, 2, 8)


def test_parameters_replaced_after_the_engine_was_built_are_refused():
    lin = torch.nn.Linear(2, 1)
    eng = _engine(lin)
    eng.check_parameters(lin)  # the same tensors: fine
    lin.weight = torch.nn.Parameter(lin.weight.detach().clone())  # what a wrapping strategy does
    with pytest.raises(RuntimeError, match=r"^the model's trainable parameters were replaced after the training "
                                           r"engine built its optimizer \(trainer.strategy=fsdp wraps them\): use "
                                           r"trainer.strategy=ddp.$"):
        eng.check_parameters(lin)
