"""EMA of the trainable weights (issue 18 item 3): the update against a hand computation, the swap
used by validation, the engine's EMA along a training trajectory, and `convert export-hf --weights`.
(The SIGKILL + resume of a run with EMA is tests/test_train_clip.py::test_sigkill_then_resume_repeats_the_loss_sequence.)"""
from __future__ import annotations

import pytest
import torch

from llm2clip_nemo.config import ConfigError
from llm2clip_nemo.engine import EMA, EmaConfig, OptimConfig, TrainEngine, ema_decay


def _ema_of(values, cfg):
    w = torch.nn.Parameter(torch.tensor([0.0]))
    ema = EMA([("w", w)], cfg)
    decays, out = [], []
    for v in values:  # what an optimizer step would do to w, then the EMA update
        with torch.no_grad():
            w.fill_(v)
        decays.append(ema.update())
        out.append(ema.shadow["w"].item())
    return decays, out


def test_ema_equals_a_hand_computation_over_3_steps():
    # decay 0.5, no warm-up, from w0 = 0: 0.5*0 + 0.5*1 = 0.5; 0.5*0.5 + 0.5*3 = 1.75; 0.5*1.75 + 0.5*7 = 4.375
    assert _ema_of([1.0, 3.0, 7.0], EmaConfig(enabled=True, decay=0.5)) == ([0.5, 0.5, 0.5], [0.5, 1.75, 4.375])
    # decay 0.8, warm-up 2: d = 0.8 * min(1, t/2) = 0, 0.4, 0.8 -> 1; 0.4*1 + 0.6*3 = 2.2; 0.8*2.2 + 0.2*7 = 3.16
    decays, out = _ema_of([1.0, 3.0, 7.0], EmaConfig(enabled=True, decay=0.8, warmup_steps=2))
    assert decays == pytest.approx([0.0, 0.4, 0.8]) and out == pytest.approx([1.0, 2.2, 3.16], rel=1e-6)
    assert [ema_decay(t, EmaConfig(decay=0.999, warmup_steps=1000)) for t in (0, 500, 1000, 5000)] == \
        pytest.approx([0.0, 0.4995, 0.999, 0.999])


def test_engine_ema_follows_its_parameter_trajectory():
    torch.manual_seed(0)
    lin = torch.nn.Linear(3, 2)
    init = {n: p.detach().clone() for n, p in lin.named_parameters()}
    cfg = EmaConfig(enabled=True, decay=0.9, warmup_steps=0)
    eng = TrainEngine(lin, OptimConfig(lr=0.1, warmup_steps=0), 3, ema=cfg)
    want = dict(init)
    for _ in range(3):
        eng.train_step(None, lambda b: (lin(torch.ones(2, 3)) ** 2).sum(), samples=2)
        want = {n: 0.9 * want[n] + 0.1 * p.detach() for n, p in lin.named_parameters()}
    for n in want:
        torch.testing.assert_close(eng.ema.shadow[n], want[n], rtol=1e-6, atol=1e-7)


def test_applied_swaps_the_ema_in_and_restores_the_trained_weights_exactly():
    torch.manual_seed(0)
    lin = torch.nn.Linear(3, 2)
    ema = EMA(list(lin.named_parameters()), EmaConfig(enabled=True, decay=0.5))
    with torch.no_grad():
        lin.weight.add_(1.0)
    ema.update()
    trained = {n: p.detach().clone() for n, p in lin.named_parameters()}
    with ema.applied():
        assert all(torch.equal(p, ema.shadow[n]) for n, p in lin.named_parameters())
    assert all(torch.equal(p, trained[n]) for n, p in lin.named_parameters())
    with pytest.raises(KeyError, match=r"EMA state does not fit the model: missing \['bias'\], unexpected \['b'\]"):
        ema.load_state_dict({"updates": 1, "shadow": {"weight": lin.weight.detach(), "b": lin.bias.detach()}})


def test_ema_config_errors_name_the_field():
    with pytest.raises(ConfigError, match=r"^model.ema.decay=1.0 must be in \(0, 1\) and model.ema.warmup_steps=0 >= 0"):
        EmaConfig(enabled=True, decay=1.0).validate()


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from test_hf_export import tiny_run

    return tiny_run(tmp_path_factory.getbasetemp() / "llm2clip_tiny_run")


def test_export_hf_weights_ema_or_raw(tiny, tmp_path, capsys):
    """A checkpoint whose engine payload has an EMA exports it by default and the trained weights with
    --weights raw; --weights ema on a checkpoint without EMA is one line, exit 2."""
    from safetensors.torch import load_file

    from llm2clip_nemo.convert.cli import main as convert_main

    assert convert_main(["export-hf", "--model", str(tiny["ckpt"]), "--out", str(tmp_path / "x"), "--weights", "ema"]) == 2
    err = capsys.readouterr().err
    assert err.splitlines() == [f"llm2clip-nemo convert export-hf: error: --weights ema but {tiny['ckpt']} has no EMA "
                                "(trained with model.ema.enabled=false): use --weights raw."]
    from llm2clip_nemo.models.loading import read_ckpt

    ckpt = torch.load(tiny["ckpt"], map_location="cpu", weights_only=False)
    # an in-memory engine payload (TrainEngine.state_dict layout) built from the run's DCP tensors, with an EMA added
    model = {k.removeprefix("net."): v for k, v in read_ckpt(tiny["ckpt"], "raw")[1].items()}
    del ckpt["engine"]["dcp"]
    ckpt["engine"]["model"] = model
    ckpt["engine"]["ema"] = {"updates": 2, "shadow": {k: v + 0.5 for k, v in model.items()}}
    with_ema = tmp_path / "ema.ckpt"
    torch.save(ckpt, with_ema)
    for flags, shift, name in (([], 0.5, "ema"), (["--weights", "raw"], 0.0, "raw")):
        out = tmp_path / f"export-{name}"
        assert convert_main(["export-hf", "--model", str(with_ema), "--out", str(out), *flags]) == 0
        ad = load_file(out / "adapter" / "model.safetensors")
        for k, v in ad.items():
            assert torch.equal(v, model[k] + shift), (name, k)
        import json

        assert json.loads((out / "llm2clip.json").read_text())["training"]["weights"] == name
