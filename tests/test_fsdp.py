"""engine/parallelize.py: FSDP2 vs DDP parity on 2 gloo ranks, compile vs eager, names kept, config errors."""
from __future__ import annotations

import shutil

import pytest
import torch
from fsdp_fixtures import STEPS, build, one_rank, train, two_rank_runs  # noqa: F401  (fixtures)

from llm2clip_nemo.engine.parallelize import ParallelizeConfig, clip_grad_norm_, parallelize


def test_fsdp2_equals_ddp_on_two_ranks(two_rank_runs):  # noqa: F811
    r0, r1, _ = two_rank_runs
    ddp, fsdp = r0["ddp"], r0["fsdp2"]  # fsdp2 here also checkpoints activations and saves asynchronously
    assert len(ddp["losses"]) == len(fsdp["losses"]) == STEPS
    assert fsdp["losses"] == pytest.approx(ddp["losses"], rel=1e-5)
    moved = (ddp["weights"]["vision.projection.weight"] - ddp["weights_at_k"]["vision.projection.weight"]).abs().max()
    assert moved > 1e-3  # the weights train: the comparison is not of constants
    assert ddp["weights"].keys() == fsdp["weights"].keys()
    for name, w in ddp["weights"].items():
        torch.testing.assert_close(fsdp["weights"][name], w, rtol=1e-5, atol=1e-6, msg=name)  # measured 1.2e-7
    for name, w in r1["fsdp2"]["weights"].items():  # both ranks end with the same full weights
        torch.testing.assert_close(w, fsdp["weights"][name], rtol=0, atol=0, msg=name)
    # what each rank stores: all of it under DDP, half (dim-0 shards; the 0-dim logit scale replicated) under FSDP2
    total = sum(w.numel() for w in ddp["weights"].values())
    assert ddp["local_numel"] == r1["ddp"]["local_numel"] == {"params": total, "exp_avg": total}
    assert fsdp["local_numel"]["params"] + r1["fsdp2"]["local_numel"]["params"] == total + 1
    assert fsdp["local_numel"]["params"] == pytest.approx(total / 2, rel=0.02)
    assert fsdp["local_numel"]["exp_avg"] == fsdp["local_numel"]["params"]


def test_compile_equals_eager(one_rank):  # noqa: F811
    if shutil.which("g++") is None and shutil.which("c++") is None:
        pytest.skip("torch.compile (inductor) on CPU needs a C++ compiler; none on PATH (g++/c++)")
    runs = {}
    # the compiled run composes all three steps: checkpointed blocks, compiled, sharded by fully_shard
    compiled = ParallelizeConfig(data_parallel="fsdp2", activation_checkpointing=True, compile=True)
    for name, cfg in (("eager", ParallelizeConfig()), ("compile", compiled)):
        net, opt, ema = build(one_rank, cfg)
        runs[name] = train(net, opt, ema, range(5), 0, 1)
    torch._dynamo.reset()
    assert runs["compile"] == pytest.approx(runs["eager"], rel=1e-5)
    assert runs["eager"][0] != runs["eager"][-1]


def test_parallelize_keeps_parameter_names(one_rank):  # noqa: F811
    reference = None
    for cfg in (ParallelizeConfig(compile=True, compile_scope="tower"), ParallelizeConfig(),
                ParallelizeConfig(data_parallel="fsdp2", activation_checkpointing=True)):
        net = build(one_rank, cfg)[0]
        names = [n for n, _ in net.named_parameters()]
        sd = list(net.state_dict())
        reference = reference or (names, sd)
        assert (names, sd) == reference, cfg
    assert reference[0][:2] == ["vision.class_token", "vision.position_embeddings"]
    assert "vision.decoder.layers.1.mlp.linear_fc2.weight" in reference[0] and "loss.logit_scale" in reference[0]
    with pytest.raises(ValueError) as e:
        parallelize(net, ParallelizeConfig(activation_checkpointing=True))
    assert str(e.value) == "this module is already parallelised: call parallelize() once per module."
    torch._dynamo.reset()


def test_refuses_checkpointing_twice(one_rank):  # noqa: F811
    from fsdp_fixtures import TEACHER_DIM, tiny_cfg

    from llm2clip_nemo.models.network import LLM2CLIPNetwork

    mc = tiny_cfg()
    mc.vision.recompute = True
    with pytest.raises(ValueError) as e:
        parallelize(LLM2CLIPNetwork(mc, one_rank, TEACHER_DIM), ParallelizeConfig(activation_checkpointing=True))
    assert str(e.value) == ("model.vision.recompute=true and model.parallel.activation_checkpointing=true would "
                            "checkpoint every block twice: set one of them to false.")


def test_clip_grad_norm_equals_torch_on_plain_gradients():
    torch.manual_seed(0)
    a = [torch.nn.Parameter(torch.randn(5, 3)), torch.nn.Parameter(torch.randn(()))]
    b = [torch.nn.Parameter(p.detach().clone()) for p in a]
    for p, q in zip(a, b):
        p.grad = torch.randn_like(p) * 3
        q.grad = p.grad.clone()
    ours = clip_grad_norm_(a, 1.0)
    ref = torch.nn.utils.clip_grad_norm_(b, 1.0)
    assert ours.item() == pytest.approx(ref.item(), rel=1e-6) and ours.item() > 1.0
    for p, q in zip(a, b):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-6, atol=0)


@pytest.mark.parametrize("field,value,message", [
    ("data_parallel", "zero3", "model.parallel.data_parallel='zero3' is not one of ddp, fsdp2: choose one of them."),
    ("compile_scope", "model", "model.parallel.compile_scope='model' is not one of blocks, tower: choose one of them."),
    ("mixed_precision", "fp16",
     "model.parallel.mixed_precision='fp16' is not one of auto, bf16, fp32: choose one of them."),
    ("mixed_precision", "bf16", "model.parallel.mixed_precision='bf16' needs model.parallel.data_parallel='fsdp2' "
     "(DDP keeps the parameters' dtype): set model.parallel.data_parallel=fsdp2, or model.parallel.mixed_precision=auto "
     "and use autocast."),
])
def test_config_errors(field, value, message, tmp_path, capsys):
    """The message names the field as the user types it (model.parallel.X), in the library and on the
    command line (one line, exit 2)."""
    from llm2clip_nemo.recipes.train_clip import main

    cfg = ParallelizeConfig(**{field: value})
    with pytest.raises(ValueError) as e:
        cfg.validate()
    assert str(e.value) == message
    assert main(["--config-name", "pretrain_tiny", f"model.parallel.{field}={value}",
                 f"exp_manager.exp_dir={tmp_path}"], mode="pretrain") == 2
    assert capsys.readouterr().err == f"llm2clip-nemo pretrain: config error: {message}\n"


def test_fsdp2_bf16_policy_computes_in_bf16_keeps_fp32_weights(one_rank):  # noqa: F811
    from fsdp_fixtures import batch

    pixels, emb = batch(0)
    losses = {}
    for mp in ("fp32", "bf16"):
        net, opt, _ = build(one_rank, ParallelizeConfig(data_parallel="fsdp2", mixed_precision=mp))
        loss = net(pixels, emb)
        loss.backward()
        losses[mp] = loss
        assert {p.dtype for p in net.parameters()} == {torch.float32}  # sharded master weights
        assert {p.grad.dtype for p in net.parameters()} == {torch.float32}
    assert (losses["fp32"].dtype, losses["bf16"].dtype) == (torch.float32, torch.bfloat16)
    assert losses["bf16"].item() == pytest.approx(losses["fp32"].item(), rel=2e-2)
    assert losses["bf16"].item() != losses["fp32"].item()
