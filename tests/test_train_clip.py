"""Stage 2: parity of parallel layouts, online vs offline teacher, exact resume, bad configs."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from clip_fixtures import TINY_TEACHER_BIDIRECTIONAL, TINY_VISION, tiny_offline_setup, tiny_overrides
from dist_utils import run_workers

from llm2clip_nemo.config import ConfigError, load_config
from llm2clip_nemo.recipes.train_clip import TrainCLIPConfig, per_rank_batch, run


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return tiny_offline_setup(tmp_path_factory.mktemp("clip"))


def tiny_model_cfg(loss, sampling="one"):
    over = TINY_VISION + [f"model.loss.kind={loss}", f"model.train_ds.caption_sampling={sampling}"]
    return load_config(TrainCLIPConfig, None, over).model


def _dp_worker(rank, world, loss_kind, pixels, emb, mask=None):
    import torch.distributed as dist

    from llm2clip_nemo.models.llm2clip import LLM2CLIPNetwork
    from llm2clip_nemo.runtime import init_parallel

    g = init_parallel(1)
    torch.manual_seed(0)
    net = LLM2CLIPNetwork(tiny_model_cfg(loss_kind, sampling="one" if mask is None else "all"), g, teacher_dim=24)
    n = pixels.shape[0] // world
    sl = slice(rank * n, (rank + 1) * n)
    loss = net(pixels[sl], emb[sl], group=dist.group.WORLD if world > 1 else None,
               caption_mask=None if mask is None else mask[sl])
    loss.backward()
    grads = {}
    for name, p in net.named_parameters():  # what DDP does: average the gradients over ranks
        gr = p.grad.detach().clone()
        if world > 1:
            dist.all_reduce(gr)
            gr /= world
        grads[name] = gr
    losses = torch.tensor([loss.item()])
    if world > 1:
        dist.all_reduce(losses)
        losses /= world
    if world == 1 and mask is not None:  # also: K=1 under caption_sampling=all vs the one-caption loss
        k1 = []
        for sampling, e in (("one", emb[:, 0]), ("all", emb[:, :1])):
            torch.manual_seed(0)
            other = LLM2CLIPNetwork(tiny_model_cfg(loss_kind, sampling=sampling), g, teacher_dim=24)
            with torch.no_grad():
                k1.append(other(pixels, e, caption_mask=None if sampling == "one" else mask[:, :1] | True).item())
        return losses.item(), grads, k1
    return losses.item(), grads


@pytest.mark.parametrize("loss_kind", ["clip", "siglip"])
def test_dp2_equals_dp1_same_global_batch(loss_kind):
    torch.manual_seed(1)
    pixels, emb = torch.randn(8, 3, 16, 16), torch.randn(8, 24)
    (l1, g1), = run_workers(_dp_worker, 1, loss_kind, pixels, emb)
    l2, g2 = run_workers(_dp_worker, 2, loss_kind, pixels, emb)[0]
    assert l2 == pytest.approx(l1, rel=1e-5, abs=1e-6)
    for name in g1:
        torch.testing.assert_close(g2[name], g1[name], rtol=1e-4, atol=1e-6, msg=name)


def test_every_caption_dp2_equals_dp1_and_one_caption_is_the_single_loss(loss_kind="clip"):
    """caption_sampling=all: 3 teacher vectors per image, 3 of them absent (all on rank 0, so the ranks
    hold 9 and 12 valid texts), 2 ranks equal one process; with K=1 it equals the one-caption loss.
    (InfoNCE only here: both multi-positive losses are checked DP=2 vs DP=1 in test_losses.py.)"""
    torch.manual_seed(1)
    pixels, emb = torch.randn(8, 3, 16, 16), torch.randn(8, 3, 24)
    mask = torch.ones(8, 3, dtype=torch.bool)
    mask[0, 1] = mask[2, 2] = mask[3, 0] = False  # all on rank 0's half: the text->image mean is global
    (l1, g1, (one, all_k1)), = run_workers(_dp_worker, 1, loss_kind, pixels, emb, mask)
    l2, g2 = run_workers(_dp_worker, 2, loss_kind, pixels, emb, mask)[0]
    assert l2 == pytest.approx(l1, rel=1e-5, abs=1e-6)
    for name in g1:
        torch.testing.assert_close(g2[name], g1[name], rtol=1e-4, atol=1e-6, msg=name)
    assert all_k1 == pytest.approx(one, rel=1e-6, abs=1e-6)


def test_every_caption_batches_hold_each_fields_sidecar_vector(tiny, tmp_path):
    """caption_sampling=all over shards where some samples lack the long field: teacher_emb [B,2,dim]
    holds the sidecar's txt and long rows, caption_mask marks the absent long captions."""
    from clip_fixtures import make_shards
    from synthetic_shards import tiny_stream_config

    from llm2clip_nemo.data.sidecar import SidecarReader, sidecar_path
    from llm2clip_nemo.data.stream import ImageTextStream
    from llm2clip_nemo.recipes.extract import ExtractConfig
    from llm2clip_nemo.recipes.extract import run as extract

    teacher = tiny[0]
    shorts = [f"w{i} w{i + 1}" for i in range(8)]
    longs = [None if i % 3 == 0 else f"w{i} w{i + 2} w{i + 4} w{i + 6}" for i in range(8)]
    shards = make_shards(tmp_path / "s", shorts, longs, per_shard=8)
    extract(load_config(ExtractConfig, None, [f"data.urls={shards}", f"teacher.path={teacher}", "progress=false",
                                              f"teacher.bidirectional={TINY_TEACHER_BIDIRECTIONAL}"]))
    stream = ImageTextStream(tiny_stream_config(str(shards), caption_sampling="all", batch_size=8, epochs=1,
                                                resampled=False), output="embeddings")
    batch = next(iter(stream))
    url = batch["url"][0]
    reader = SidecarReader(sidecar_path(url))
    assert batch["teacher_emb"].shape == (8, 2, 64) and batch["caption_mask"].shape == (8, 2)
    for b, key in enumerate(batch["key"]):
        i = int(key)
        torch.testing.assert_close(batch["teacher_emb"][b], reader.get(key), atol=0, rtol=0)
        assert batch["caption_mask"][b].tolist() == [True, longs[i] is not None]
        assert batch["captions"][b] == [shorts[i], longs[i] or ""]
        assert batch["caption"][b] == shorts[i] and batch["caption_field"][b] == "txt"
    assert batch["stream_state"]["slots"][0]["stats"]["fields"] == {"txt": 8, "long": 5}


def _online_offline_worker(rank, world, teacher_dir, sidecar, captions, keys):
    import torch.distributed as dist

    from llm2clip_nemo.data.sidecar import SidecarReader
    from llm2clip_nemo.models.llm2clip import LLM2CLIPNetwork
    from llm2clip_nemo.runtime import init_parallel
    from llm2clip_nemo.text.teacher import Teacher

    g = init_parallel(world)
    teacher = Teacher.load(teacher_dir, g)
    mine = slice(rank * 4, rank * 4 + 4)  # every rank its own captions and images
    online = teacher.encode_online(captions[mine])
    reader = SidecarReader(sidecar, fingerprint=teacher.fingerprint)
    offline = torch.stack([reader.vector(k, "txt") for k in keys[mine]])
    torch.manual_seed(0)
    net = LLM2CLIPNetwork(tiny_model_cfg("clip"), g, teacher.hidden_size)
    torch.manual_seed(10 + rank)
    pixels = torch.randn(4, 3, 16, 16)
    with torch.no_grad():
        return (net(pixels, online, group=dist.group.WORLD).item(), net(pixels, offline, group=dist.group.WORLD).item())


def test_online_tp3_teacher_equals_offline_sidecars(smollm2_tp3, tmp_path):
    """The same batch through the online TP=3 teacher and through fp16 sidecars: the same loss."""
    from clip_fixtures import make_shards
    from llm_fixtures import CAPTIONS

    from llm2clip_nemo.data.sidecar import SidecarReader
    from llm2clip_nemo.recipes.extract import ExtractConfig
    from llm2clip_nemo.recipes.extract import run as extract

    caps = CAPTIONS[:12]
    shards = make_shards(tmp_path / "s", caps, caps, per_shard=12)
    extract(load_config(ExtractConfig, None, [f"data.urls={shards}", f"teacher.path={smollm2_tp3}", "progress=false"]))
    sidecar = str(shards / "shard-000000.emb.tar")
    keys = SidecarReader(sidecar).keys()
    outs = run_workers(_online_offline_worker, 3, str(smollm2_tp3), sidecar, caps, keys)
    for online, offline in outs:
        assert online == pytest.approx(offline, abs=2e-3)  # fp16 storage of the sidecar


def _pretrain_cmd(overrides):
    return [sys.executable, "-m", "llm2clip_nemo.cli", "pretrain", *overrides]


def _losses(log):
    return [json.loads(x) for x in log.read_text().splitlines()]


def test_sigkill_then_resume_repeats_the_loss_sequence(tiny, tmp_path):
    """Three CLI runs under the same process settings: uninterrupted; SIGKILLed after its step-10
    checkpoint; resumed from that checkpoint. The per-step losses must be identical, and so must the
    EMA of the weights (model.ema, issue 18) in the final checkpoints."""
    teacher, train, val = tiny
    env = {**os.environ, "OMP_NUM_THREADS": "2"}
    ema = {"model.ema.enabled": "true", "model.ema.decay": 0.9, "model.ema.warmup_steps": 4}
    subprocess.run(_pretrain_cmd(tiny_overrides(teacher, train, val, tmp_path / "clean", steps=24, **ema)), env=env,
                   check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ref = [r["loss"] for r in _losses(tmp_path / "clean" / "run" / "losses.jsonl")]
    assert len(ref) == 24
    exp = tmp_path / "killed"
    log = exp / "run" / "losses.jsonl"
    proc = subprocess.Popen(_pretrain_cmd(tiny_overrides(teacher, train, val, exp, steps=24, **ema)), env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if log.exists() and len(log.read_text().splitlines()) >= 13:  # past the step-10 checkpoint
            break
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    before = _losses(log)
    assert 10 < len(before) < 24, "the run was not killed mid-training"
    subprocess.run(_pretrain_cmd(tiny_overrides(teacher, train, val, exp, steps=24, **ema)), env=env, check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    after = _losses(log)  # exp_manager moves the killed run's log files aside on resume
    assert after[0]["step"] in (10, 15, 20) and after[0]["step"] <= len(before)  # from its last checkpoint
    per_step = {r["step"]: r["loss"] for r in before + after}  # the resumed run's value wins for repeated steps
    assert [per_step[s] for s in range(24)] == ref
    from llm2clip_nemo.models.loading import read_ckpt

    paths = [max((d / "run" / "checkpoints").glob("*last.ckpt"), key=lambda p: p.stat().st_mtime)
             for d in (tmp_path / "clean", exp)]
    final = [torch.load(p, weights_only=False)["engine"] for p in paths]
    shadows = [read_ckpt(p, "ema")[1] for p in paths]  # the EMA tensors live in the DCP directory beside the .ckpt
    assert final[0]["step"] == final[1]["step"] >= 20
    assert final[0]["ema"]["updates"] == final[1]["ema"]["updates"] == final[0]["step"]
    assert shadows[0]
    for name, want in shadows[0].items():
        assert torch.equal(shadows[1][name], want), name


def test_fingerprint_mismatch_is_refused_by_training(tiny, tmp_path):
    from llm2clip_nemo.data.sidecar import SidecarMismatchError

    teacher, train, val = tiny  # sidecars were extracted with pooling=mean
    cfg = load_config(TrainCLIPConfig, None, tiny_overrides(teacher, train, val, tmp_path, steps=2,
                                                            **{"model.teacher.pooling": "last_token",
                                                               "model.num_workers": 0}))
    with pytest.raises(SidecarMismatchError, match="has teacher fingerprint .* expected .* another teacher's embeddings"):
        run(cfg)


def test_bad_configs(tiny, tmp_path):
    teacher, train, val = tiny
    base = tiny_overrides(teacher, train, val, tmp_path, steps=2)
    with pytest.raises(ValueError, match=r"vision.width.*vision.num_heads"):
        load_config(TrainCLIPConfig, None, base + ["model.vision.width=33"])
    with pytest.raises(ConfigError) as e:  # the size is the teacher's: typing it, even right, is refused
        load_config(TrainCLIPConfig, None, base + ["model.adapter.input_dim=64"])
    assert str(e.value) == ("model.adapter.input_dim is no longer set in configs: it is the teacher's hidden size, read "
                            "from the teacher when the model is built. Remove model.adapter.input_dim from the YAML or "
                            "the overrides.")
    with pytest.raises(ConfigError, match=r"model.global_batch_size=9 is not divisible by the 2 ranks: use a multiple of 2"):
        per_rank_batch(9, 2)
    assert per_rank_batch(32768, 4096) == 8
    with pytest.raises(RuntimeError, match=r"vision.fp8=true but FP8 is unavailable on this machine"):
        run(load_config(TrainCLIPConfig, None, base + ["model.vision.fp8=true"]))


def test_unmapped_energon_construct_exits_2_in_one_line(tiny, tmp_path, capsys):
    from llm2clip_nemo.recipes.train_clip import main

    teacher, train, val = tiny
    meta = tmp_path / "mix.yaml"
    meta.write_text("__module__: megatron.energon\n__class__: MetadatasetV2\n"
                    "splits:\n  train:\n    join:\n    - path: ./a\n    - path: ./b\n")
    argv = tiny_overrides(teacher, train, val, tmp_path, steps=2, **{"model.train_ds.urls": str(meta)})
    assert main(argv, "pretrain") == 2
    err = capsys.readouterr().err
    assert err.splitlines()[-1] == (
        f"llm2clip-nemo pretrain: data error: {meta}: splits.train: 'join' is not supported by llm2clip_nemo; joining "
        f"datasets sample by sample has no equivalent here: write shards holding the joined members "
        f"(`llm2clip-nemo data build`)")
    assert "Traceback" not in err


def test_validation_stream_names_the_fields_where_the_user_sets_them(tiny, tmp_path):
    """The validation stream is assembled from model.validation_ds (urls, sidecar_dir, its one caption
    field) and model.train_ds (the rest): its messages name each field where the user sets it (before:
    'model.validation_ds.caption_fields' and 'model.validation_ds.seed', neither of which exists)."""
    from llm2clip_nemo.models.llm2clip import LLM2CLIPModel
    from llm2clip_nemo.models.nemo_base import to_dictconfig

    teacher, train, val = tiny
    model = LLM2CLIPModel(to_dictconfig(load_config(TrainCLIPConfig, None, tiny_overrides(teacher, train, val, tmp_path)).model))
    named = model.validation_stream().named
    assert [named(f) for f in ("urls", "sidecar_dir", "caption_fields", "seed", "transform")] == [
        "model.validation_ds.urls", "model.validation_ds.sidecar_dir", "model.validation_ds.caption_field",
        "model.train_ds.seed", "model.train_ds.transform"]
    assert model.build_stream().named("caption_fields") == "model.train_ds.caption_fields"


def test_every_caption_run_logs_the_multi_positive_loss_of_its_batches(tiny, tmp_path):
    """A 2-step offline run with caption_sampling=all: its step-0 loss equals the multi-positive loss
    of a fresh model (same seed) on the stream's first batch, all of txt and long as positives."""
    from llm2clip_nemo.losses import MultiPositiveInfoNCELoss
    from llm2clip_nemo.models.llm2clip import LLM2CLIPModel
    from llm2clip_nemo.models.nemo_base import to_dictconfig

    teacher, train, val = tiny
    over = tiny_overrides(teacher, train, val, tmp_path, steps=2, **{
        "model.train_ds.caption_sampling": "all", "model.num_workers": 0,
        "model.train_ds.epochs": 1, "model.train_ds.resampled": False})
    over = [o for o in over if not o.startswith("model.validation_ds.urls=")]  # no validation
    fresh = LLM2CLIPModel(to_dictconfig(load_config(TrainCLIPConfig, None, over).model))
    batch = next(iter(fresh.build_stream()))
    assert batch["teacher_emb"].shape == (8, 2, 64) and bool(batch["caption_mask"].all())
    assert isinstance(fresh.net.loss, MultiPositiveInfoNCELoss)
    with torch.no_grad():
        want = fresh.net(batch["image"], batch["teacher_emb"], caption_mask=batch["caption_mask"]).item()
    res = run(load_config(TrainCLIPConfig, None, over))
    assert [s for s, _ in res["losses"]] == [0, 1]
    assert res["losses"][0][1] == pytest.approx(want, rel=1e-6, abs=1e-6)
    assert res["data"]["fields"] == {"txt": 16, "long": 16}  # both fields of every trained sample
    # throughput accounting of the run (runtime.throughput): 2 steps x 8 samples on one device, model
    # FLOPs per sample from the run's ViT and adapter (teacher hidden size 64), MFU against the CPU peak
    from llm2clip_nemo.runtime.flops import train_flops_per_sample

    cfg = load_config(TrainCLIPConfig, None, over).model
    tp = res["throughput"]
    assert tp["samples"] == 16 and tp["samples_per_s"] == pytest.approx(16 / tp["seconds"], rel=1e-9)
    assert tp["tflops"] == pytest.approx(tp["samples_per_s"] * train_flops_per_sample(cfg.vision, cfg.adapter, 64) / 1e12,
                                         rel=1e-9)
    assert 0 < tp["mfu"] < 1


def test_every_caption_online_embeds_present_captions_only():
    """Online teacher with caption_sampling=all: only present captions reach the teacher, in row-major
    order, and come back at their [b, k] slot; absent slots are zero rows."""
    from types import SimpleNamespace

    from llm2clip_nemo.models.llm2clip import LLM2CLIPModel

    seen = []

    def encode_online(texts, batch_size, max_tokens):
        seen.append(list(texts))
        return torch.tensor([[float(len(t)), float(t.count("w"))] for t in texts])

    me = SimpleNamespace(typed=SimpleNamespace(teacher_mode="online",
                                               teacher=SimpleNamespace(batch_size=4, max_tokens=0)),
                         teacher=SimpleNamespace(encode_online=encode_online))
    batch = {"captions": [["w1", "w2 w3 w4"], ["w5 w6", ""]],
             "caption_mask": torch.tensor([[True, True], [True, False]])}
    out = LLM2CLIPModel.teacher_embeddings(me, batch)
    assert seen == [["w1", "w2 w3 w4", "w5 w6"]]
    assert out.tolist() == [[[2.0, 1.0], [8.0, 3.0]], [[5.0, 2.0], [0.0, 0.0]]]
