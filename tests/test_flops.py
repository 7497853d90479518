"""MFU accounting: FLOPs per sample against a hand count and torch's FLOP counter, the meter's
arithmetic, the GPU peak table and the cached CPU peak."""
from __future__ import annotations

import json

import pytest
import torch

from llm2clip_nemo.runtime import destroy_parallel, flops, init_parallel
from llm2clip_nemo.runtime.throughput import ThroughputMeter, meter_for
from llm2clip_nemo.text.adapter import AdapterConfig, LLM2CLIPAdapter
from llm2clip_nemo.vision import PRESETS, VisionTransformer


def test_vit_b16_train_flops_per_sample_equal_a_hand_count():
    """ViT-B/16 at 224 px with the paper's adapter on a 4096-d teacher, counted by hand (2 FLOPs a MAC)."""
    tokens = 14 * 14 + 1  # 196 patches + the class token
    patch_conv = 2 * 196 * (3 * 16 * 16) * 768  # each patch: a 768 -> 768 matmul
    qkv = 2 * tokens * 768 * (3 * 768)
    attn_out = 2 * tokens * 768 * 768
    mlp = 2 * tokens * 768 * 3072 * 2  # fc1 and fc2
    scores = 2 * tokens * tokens * 768  # Q K^T over all heads
    values = 2 * tokens * tokens * 768  # softmax(QK^T) V
    projection = 2 * 768 * 512  # pooled class token -> 512
    vision = patch_conv + 12 * (qkv + attn_out + mlp + scores + values) + projection
    assert vision == 35_126_906_880  # 17.6 G multiply-adds: the ViT-B/16 '17.6 GFLOPs' of the literature
    adapter = 4 * 2 * (2 * 4096 * 8192) + 2 * 4096 * 512  # 4 blocks d -> 2d -> d, then d -> joint
    hand = 3 * (vision + adapter)  # forward + backward (2x forward)
    got = flops.train_flops_per_sample(PRESETS["B/16"], AdapterConfig(), 4096)  # joint = B/16 embed_dim 512
    assert got == pytest.approx(hand, rel=0.01)
    assert got == pytest.approx(107_003_916_288, rel=1e-12)  # and our count is exactly this one


def test_train_flops_equal_torch_flop_counter_on_a_real_step():
    """torch.utils.flop_counter over a real forward + backward of the tiny ViT and adapter with the
    contrastive loss: within 1% of our count (the counter also sees the B x B logits, and the patch
    conv's backward has no input gradient to compute). torch 2.13's counter has no formula for the
    CPU flash-attention kernel; it is given torch's own SDPA formulas."""
    from torch.utils.flop_counter import FlopCounterMode, sdpa_backward_flop_count, sdpa_flop_count

    from llm2clip_nemo.losses import ClipInfoNCELoss

    groups = init_parallel(1)
    try:
        torch.manual_seed(0)
        cfg, acfg = PRESETS["tiny"], AdapterConfig()
        vit, adapter, loss_fn = VisionTransformer(cfg, groups), LLM2CLIPAdapter(acfg, 576, cfg.embed_dim), ClipInfoNCELoss()
        batch = 4
        pixels, teacher = torch.randn(batch, 3, 64, 64), torch.randn(batch, 576)
        aten = torch.ops.aten
        cpu_attention = {
            aten._scaled_dot_product_flash_attention_for_cpu: lambda q, k, v, *a, **kw: sdpa_flop_count(q, k, v),
            aten._scaled_dot_product_flash_attention_for_cpu_backward:
                lambda grad, q, k, v, *a, **kw: sdpa_backward_flop_count(grad, q, k, v),
        }
        with FlopCounterMode(display=False, custom_mapping=cpu_attention) as counter:
            loss_fn(vit(pixels), adapter(teacher)).backward()
        per_sample = counter.get_total_flops() / batch
    finally:
        destroy_parallel()
    ours = flops.train_flops_per_sample(cfg, acfg, 576)
    assert ours == 3 * (cfg.forward_flops() + 2 * (4 * 2 * 576 * 1152 + 576 * 128))
    assert per_sample == pytest.approx(ours, rel=0.01)


def test_meter_arithmetic():
    m = ThroughputMeter(flops_per_sample=2e9, peak_flops=100e12, world_size=4)
    r = m.update(samples=8000, seconds=2.0)
    # 4000 samples/s over 4 devices = 1000 per device; x 2 GFLOP = 2 TFLOP/s; of a 100 TFLOP/s peak = 2%
    assert r == {"samples_per_s": 4000.0, "samples_per_s_per_device": 1000.0, "tflops": 2.0, "mfu": 0.02}
    m.update(samples=2000, seconds=3.0)
    s = m.summary()
    assert s["samples"] == 10000 and s["seconds"] == 5.0 and s["samples_per_s"] == 2000.0
    assert s["tflops"] == pytest.approx(1.0) and s["mfu"] == pytest.approx(0.01)
    unknown = ThroughputMeter(1e9, None).update(10, 1.0)
    assert unknown["mfu"] is None and unknown["tflops"] == pytest.approx(0.01)
    assert ThroughputMeter(1e9, 1e12).summary()["samples_per_s"] is None
    with pytest.raises(ValueError, match=r"^seconds=0 must be > 0$"):
        m.update(1, 0)
    with pytest.raises(ValueError, match=r"^world_size=0 must be >= 1$"):
        ThroughputMeter(1e9, 1e12, world_size=0)


def test_gpu_peak_table():
    assert flops.gpu_peak_flops("NVIDIA H100 80GB HBM3") == 989e12
    assert flops.gpu_peak_flops("NVIDIA H100 80GB HBM3", "fp8") == 1979e12
    assert flops.gpu_peak_flops("NVIDIA H100 PCIe") == 756e12
    assert flops.gpu_peak_flops("NVIDIA H200") == 989e12
    assert flops.gpu_peak_flops("NVIDIA A100-SXM4-80GB") == 312e12
    assert flops.gpu_peak_flops("NVIDIA A100-SXM4-80GB", "fp8") is None  # no FP8 tensor cores
    assert flops.gpu_peak_flops("NVIDIA GeForce GTX 1080") is None
    with pytest.raises(ValueError, match=r"^precision='fp16': choose bf16 or fp8$"):
        flops.gpu_peak_flops("NVIDIA H200", "fp16")


def test_cpu_peak_is_measured_once_and_cached(tmp_path, monkeypatch):
    cache = tmp_path / "cpu_peak.json"
    calls = []
    real = flops.measure_cpu_gemm_flops
    monkeypatch.setattr(flops, "measure_cpu_gemm_flops",
                        lambda threads: calls.append(threads) or real(threads, n=256, seconds=0.05))
    first = flops.cpu_peak_flops(1, cache)
    assert calls == [1] and 1e8 < first < 1e13  # a real GEMM rate: 0.1 GFLOP/s .. 10 TFLOP/s on one thread
    assert flops.cpu_peak_flops(1, cache) == first and calls == [1]  # read back, not measured again
    assert json.loads(cache.read_text()) == {flops.cpu_peak_key(1): first}
    assert "threads=1" in flops.cpu_peak_key(1) and torch.__version__ in flops.cpu_peak_key(1)
    cache.write_text("{not json")  # a corrupt cache is measured over, not raised
    assert flops.cpu_peak_flops(1, cache) > 0 and calls == [1, 1]
    # the meter of a run's config reads the same cache
    from llm2clip_nemo.models.llm2clip_config import LLM2CLIPConfig

    cfg = LLM2CLIPConfig()
    m = meter_for(cfg, 576, world_size=2, device="cpu", threads=1, cache_path=cache)
    assert calls == [1, 1] and m.peak_flops == flops.cpu_peak_flops(1, cache) and m.world_size == 2
    assert m.flops_per_sample == flops.train_flops_per_sample(cfg.vision, cfg.adapter, 576)
