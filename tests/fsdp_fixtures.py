"""A plain stage-2 training loop over engine/parallelize.py and engine/checkpoint.py, run on 2 gloo ranks
once per session: DDP and FSDP2 uninterrupted runs (each checkpointing after step K), then each
checkpoint resumed under the other layout. tests/test_fsdp.py and tests/test_dcp.py assert on it."""
from __future__ import annotations

import copy

import pytest
import torch
from clip_fixtures import TINY_VISION
from dist_utils import run_workers

STEPS, K, GLOBAL_BATCH, TEACHER_DIM = 10, 4, 8, 24


def tiny_cfg():
    from llm2clip_nemo.config import load_config
    from llm2clip_nemo.recipes.train_clip import TrainCLIPConfig

    return load_config(TrainCLIPConfig, None, TINY_VISION).model  # the adapter input is TEACHER_DIM


def batch(step: int):
    """The global batch of `step` (pixels [8,3,16,16], teacher embeddings [8,24]); the same on every rank."""
    gen = torch.Generator().manual_seed(1000 + step)
    return torch.randn(GLOBAL_BATCH, 3, 16, 16, generator=gen), torch.randn(GLOBAL_BATCH, TEACHER_DIM, generator=gen)


def build(groups, cfg):
    """(net, optimizer, ema) parallelised by `cfg`; the weights come from seed 0 as in a fresh run."""
    from llm2clip_nemo.engine import param_groups
    from llm2clip_nemo.engine.parallelize import parallelize
    from llm2clip_nemo.models.network import LLM2CLIPNetwork, layer_id

    mc = tiny_cfg()
    torch.manual_seed(0)
    net = LLM2CLIPNetwork(mc, groups, TEACHER_DIM)
    ema = copy.deepcopy(net.adapter)  # an extra module state to checkpoint beside the model (stand-in for EMA)
    parallelize(net, cfg)
    n = mc.vision.num_layers
    groups_ = param_groups(net.named_parameters(), mc.optim, lambda name: layer_id(name, n), n)
    for g in groups_:
        g.pop("names")
    return net, torch.optim.AdamW(groups_, lr=1e-3, betas=(0.9, 0.98), eps=1e-6), ema


def train(net, opt, ema, steps, rank, world):
    """Steps `steps` of the global batch split over ranks; returns the global (rank-mean) losses."""
    import torch.distributed as dist

    from llm2clip_nemo.engine.parallelize import clip_grad_norm_

    losses = []
    n = GLOBAL_BATCH // world
    for step in steps:
        pixels, emb = batch(step)
        loss = net(pixels[rank * n:(rank + 1) * n], emb[rank * n:(rank + 1) * n],
                   group=dist.group.WORLD if world > 1 else None)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        clip_grad_norm_(net.parameters(), 1.0)
        opt.step()
        with torch.no_grad():
            for p in ema.parameters():
                p.mul_(0.5)
        mean = loss.detach().clone()
        if world > 1:
            dist.all_reduce(mean)
        losses.append(mean.item() / world)
    return losses


def full_weights(net):
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    sd = get_model_state_dict(net, options=StateDictOptions(full_state_dict=True))
    return {k: v.detach().clone() for k, v in sd.items() if isinstance(v, torch.Tensor)}


def uninterrupted(groups, cfg, ckpt, async_save, rank, world):
    """STEPS steps, a checkpoint after step K (training goes on while an async save writes)."""
    from llm2clip_nemo.engine.checkpoint import save_checkpoint

    net, opt, ema = build(groups, cfg)
    losses = train(net, opt, ema, range(K), rank, world)
    at_k = full_weights(net)
    ema_k = {k: v.clone() for k, v in ema.state_dict().items()}
    pending = save_checkpoint(ckpt, net, opt, step=K, extras={"data": {"next_step": K}}, rank_state={"rank": rank},
                              modules={"ema": ema}, async_save=async_save)
    probe = torch.rand(3)  # the first draw of the torch RNG after the save: a resume must give the same
    losses += train(net, opt, ema, range(K, STEPS), rank, world)
    pending.wait()
    return {"losses": losses, "weights": full_weights(net), "weights_at_k": at_k, "ema_at_k": ema_k, "probe": probe,
            "local_numel": local_numel(net, opt)}


def local_numel(net, opt) -> dict:
    """Elements this rank stores: parameters and AdamW's exp_avg (a DTensor's local shard only)."""
    from torch.distributed.tensor import DTensor

    def n(t):
        return t.to_local().numel() if isinstance(t, DTensor) else t.numel()

    return {"params": sum(n(p) for p in net.parameters()),
            "exp_avg": sum(n(opt.state[p]["exp_avg"]) for p in net.parameters() if p in opt.state)}


def resumed(groups, cfg, ckpt, rank, world):
    """A fresh process state (other seed, other layout) loading `ckpt`, then steps K..STEPS."""
    from llm2clip_nemo.engine.checkpoint import load_checkpoint

    net, opt, ema = build(groups, cfg)
    torch.manual_seed(12345)
    loaded = load_checkpoint(ckpt, net, opt, modules={"ema": ema})
    probe = torch.rand(3)
    ema_loaded = {k: v.clone() for k, v in ema.state_dict().items()}
    losses = train(net, opt, ema, range(loaded.step, STEPS), rank, world)
    return {"losses": losses, "weights": full_weights(net), "loaded": loaded, "probe": probe, "ema": ema_loaded}


def two_rank_worker(rank, world, root):
    from llm2clip_nemo.engine.parallelize import ParallelizeConfig
    from llm2clip_nemo.runtime import init_parallel

    g = init_parallel(1)
    ddp = ParallelizeConfig(data_parallel="ddp")
    fsdp = ParallelizeConfig(data_parallel="fsdp2")
    fsdp_ac = ParallelizeConfig(data_parallel="fsdp2", activation_checkpointing=True)
    return {
        "ddp": uninterrupted(g, ddp, f"{root}/ddp", False, rank, world),
        "fsdp2": uninterrupted(g, fsdp_ac, f"{root}/fsdp2", True, rank, world),
        "fsdp2_to_ddp": resumed(g, ddp, f"{root}/fsdp2", rank, world),
        "ddp_to_fsdp2": resumed(g, fsdp, f"{root}/ddp", rank, world),
    }


_RUNS: dict = {}


@pytest.fixture(scope="session")
def two_rank_runs(tmp_path_factory):
    """(rank-0 results, rank-1 results, checkpoint root) of `two_rank_worker`, computed once per session
    (each test module imports this fixture, which pytest treats as two fixtures: hence the cache)."""
    if "runs" not in _RUNS:
        root = tmp_path_factory.mktemp("fsdp_runs")
        _RUNS["runs"] = (*run_workers(two_rank_worker, 2, str(root)), root)
    return _RUNS["runs"]


@pytest.fixture(scope="module")
def one_rank():
    """megatron parallel state and a 1-rank gloo group in this process."""
    from llm2clip_nemo.runtime import destroy_parallel, init_parallel

    g = init_parallel(1)
    yield g
    destroy_parallel()
