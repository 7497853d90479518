"""The LLM2CLIP adapter: the paper's size, the computation vs an explicit reference, config errors."""
import pytest
import torch
import torch.nn.functional as F

from llm2clip_nemo.text.adapter import AdapterConfig, LLM2CLIPAdapter, check_teacher_dim


def test_paper_size_for_llama3_8b():
    cfg = AdapterConfig()
    with torch.device("meta"):
        adapter = LLM2CLIPAdapter(cfg, 4096, 1280)
    n = sum(p.numel() for p in adapter.parameters())
    assert n == cfg.num_params(4096, 1280) == 273_768_448  # "about 273M parameters for d=4096"
    assert len(adapter.blocks) == 4 and adapter.blocks[0].fc1.out_features == 8192


def test_forward_matches_reference():
    torch.manual_seed(0)
    cfg = AdapterConfig(num_blocks=2)
    adapter = LLM2CLIPAdapter(cfg, 16, 8).double()
    with torch.no_grad():  # move norms off their (1, 0) init so they are exercised
        for block in adapter.blocks:
            block.norm.weight.normal_()
            block.norm.bias.normal_()
    x = torch.randn(3, 16, dtype=torch.float64)
    h = x / x.norm(dim=-1, keepdim=True)
    for block in adapter.blocks:
        z = F.layer_norm(h, (16,), block.norm.weight, block.norm.bias, 1e-5)
        h = h + (F.gelu(z @ block.fc1.weight.T + block.fc1.bias) @ block.fc2.weight.T + block.fc2.bias)
    ref = F.layer_norm(h, (16,), adapter.norm.weight, adapter.norm.bias, 1e-5) @ adapter.proj.weight.T
    out = adapter(x)
    assert out.shape == (3, 8)
    torch.testing.assert_close(out, ref, atol=1e-12, rtol=0)
    # the input is L2-normalised: the teacher's embedding norm does not matter
    torch.testing.assert_close(adapter(7.0 * x), out, atol=1e-12, rtol=0)


def test_teacher_dim_mismatch_names_the_sizes_and_the_fix():
    check_teacher_dim(4096, 4096)
    with pytest.raises(ValueError) as e:
        check_teacher_dim(4096, 576)
    assert str(e.value) == ("teacher embeddings have size 576 but the adapter was built for the teacher's hidden size "
                            "4096: embed the captions with the teacher the model was built with (model.teacher.path).")
    adapter = LLM2CLIPAdapter(AdapterConfig(num_blocks=1), 12, 4)
    with pytest.raises(ValueError, match="^teacher embeddings have size 10 but the adapter was built for the teacher's "
                                         "hidden size 12: "):
        adapter(torch.randn(2, 10))


def test_bad_config():
    with pytest.raises(ValueError, match=r"model.adapter.dropout=1.5 must be in \[0, 1\)"):
        AdapterConfig(dropout=1.5).validate()
    with pytest.raises(ValueError, match=r"^the adapter's joint_dim=0 must be >= 1.$"):
        LLM2CLIPAdapter(AdapterConfig(), 12, 0)
