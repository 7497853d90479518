"""One teacher contract through every path: import-llm -> Teacher -> extraction sidecars -> training
-> HF export (from another working directory) -> `LLM2CLIP.from_pretrained`, and the online TP=2
teacher against offline sidecars on captions longer than 77 tokens."""
from __future__ import annotations

import json

import pytest
import torch
from clip_fixtures import TINY_VISION, image_bytes, tiny_overrides, word_shards
from dist_utils import run_workers
from llm_fixtures import write_tiny_llama, write_tiny_llama3

from llm2clip_nemo.config import ConfigError, load_config
from llm2clip_nemo.formats.contract import TeacherContract, read_contract

# Two sources, every field away from a default somewhere down the chain: stage 1's export (its plain
# preparation, caption tokens pooled without BOS), and a Llama-3 teacher imported with llm2vec's
# preparation by flags. Both causal, so the model card must never say bidirectional.
CONTRACTS = {
    "stage1": TeacherContract(bidirectional=False, pooling="mean", max_length=64, text_preparation="plain"),
    "llm2vec": TeacherContract(bidirectional=False, pooling="mean", max_length=64, text_preparation="llm2vec_llama3",
                               doc_max_length=40),
}
FLAGS = {"stage1": [],  # everything comes from the stage-1 export's contract
         "llm2vec": ["--attention", "causal", "--text-preparation", "llm2vec_llama3", "--max-length", "64",
                     "--doc-max-length", "40"]}
TEXTS = ["w1 w2 w3", "w40 w41 w42 w43 w44 w45 w46 w47 w48", " ".join(f"w{i}" for i in range(50)), "w7"]


def stage1_export(root):
    """A LoRA caption encoder (random LoRA B, causal, mean) over the tiny Llama-3 exported by stage 1."""
    from llm2clip_nemo.models.caption_encoder import CaptionEncoder, EncoderConfig, LoRAConfig, export_merged

    torch.manual_seed(0)
    enc = CaptionEncoder(EncoderConfig(llm_path=str(write_tiny_llama3(root / "base")), bidirectional=False,
                                       lora=LoRAConfig(dropout=0.0)))
    with torch.no_grad():
        for n, p in enc.named_parameters():
            if "lora_B" in n:
                p.copy_(torch.randn_like(p) * 0.05)
    return export_merged(enc, root / "hf", max_length=64)


@pytest.fixture(scope="module", params=sorted(CONTRACTS))
def chain(request, tmp_path_factory):
    """{source, root, teacher, train, run}: a 2-step offline run against an imported teacher."""
    import os

    from llm2clip_nemo.cli import main as cli_main
    from llm2clip_nemo.recipes.extract import ExtractConfig
    from llm2clip_nemo.recipes.extract import run as extract
    from llm2clip_nemo.recipes.train_clip import TrainCLIPConfig, run

    source = request.param
    root = tmp_path_factory.mktemp(f"chain_{source}")
    stage1_export(root) if source == "stage1" else write_tiny_llama3(root / "hf")
    cwd = os.getcwd()
    os.chdir(root)  # the run is launched with relative paths, as users do
    try:
        assert cli_main(["convert", "import-llm", "--hf", "hf", "--out", "teachers/mg", *FLAGS[source]]) == 0
        train, val = word_shards(root / "train", 32, 16, seed=1), word_shards(root / "val", 16, 16, seed=2)
        for d in (train, val):
            extract(load_config(ExtractConfig, None, [f"data.urls={d}", "teacher.path=teachers/mg", "progress=false"]))
        over = [o for o in tiny_overrides("teachers/mg", train, val, root / "runs", steps=2)
                if not o.startswith(("model.teacher.bidirectional", "model.teacher.max_length"))]  # unset: the contract's
        run(load_config(TrainCLIPConfig, None, over + ["model.num_workers=0"]))
    finally:
        os.chdir(cwd)
    run_dir = next((root / "runs").iterdir())
    return {"source": source, "root": root, "teacher": root / "teachers" / "mg", "train": train, "run": run_dir}


def test_contract_round_trips_and_every_path_embeds_alike(chain, tmp_path, monkeypatch):
    from llm2clip_nemo import LLM2CLIP
    from llm2clip_nemo.cli import main as cli_main
    from llm2clip_nemo.data.sidecar import SidecarReader
    from llm2clip_nemo.models.loading import read_ckpt, read_nemo
    from llm2clip_nemo.runtime import init_parallel
    from llm2clip_nemo.text.teacher import Teacher

    contract = CONTRACTS[chain["source"]]
    # import-llm wrote the contract (stage 1's, or the flags'); the Teacher runs with it
    assert read_contract(chain["teacher"]) == contract
    teacher = Teacher.load(chain["teacher"], init_parallel(1))
    assert teacher.contract == contract
    # the extraction sidecar records it, under the fingerprint that covers it
    reader = SidecarReader(str(chain["train"] / "shard-000000.emb.tar"), fingerprint=teacher.fingerprint)
    assert reader.meta.contract == contract.to_dict()
    # the run recorded the teacher's absolute path although it was launched with a relative one
    ckpt = next((chain["run"] / "checkpoints").glob("*last.ckpt"))
    assert read_ckpt(ckpt)[0]["teacher"]["path"] == str(chain["teacher"])
    assert read_nemo(chain["run"] / "model.nemo")[0]["teacher"]["path"] == str(chain["teacher"])
    # export-hf from another working directory
    monkeypatch.chdir(tmp_path)
    assert cli_main(["convert", "export-hf", "--model", str(chain["run"]), "--out", "export"]) == 0
    model = LLM2CLIP.from_pretrained(tmp_path / "export")
    assert model.contract == contract and read_contract(tmp_path / "export" / "llm") == contract
    # extraction's embedding (Teacher.encode_texts) == the export's (transformers + the contract)
    ours = teacher.encode_texts(TEXTS, batch_size=2)
    theirs = model.get_llm_embeddings(TEXTS, batch_size=3)
    assert (ours - theirs).abs().max().item() <= 1e-5
    # and the fp16 sidecar vectors are those embeddings of the stored captions
    from llm2clip_nemo.data.tario import iter_tar_samples

    shard = chain["train"] / "shard-000000.tar"
    sample = next(iter(iter_tar_samples(str(shard))))
    long = json.loads(sample.members["json"])["long"]
    want = model.get_llm_embeddings([long])[0]
    assert torch.allclose(reader.vector(sample.key, "long"), want, atol=2e-3 * want.abs().max().item())
    # the model card is generated from the contract: a causal teacher is never called bidirectional
    card = (tmp_path / "export" / "README.md").read_text()
    assert "bidirectional" not in card
    assert card.count(f"causal attention, mean pooling, max 64 tokens, {contract.text_preparation} text preparation") == 3


def test_export_hf_names_a_missing_teacher_and_takes_teacher_flag(chain, tmp_path, monkeypatch, capsys):
    import shutil

    from llm2clip_nemo.cli import main as cli_main

    moved = tmp_path / "moved_teacher"
    shutil.copytree(chain["teacher"], moved)
    run = tmp_path / "run"
    shutil.copytree(chain["run"], run)
    ckpt = next((run / "checkpoints").glob("*last.ckpt"))
    state = torch.load(ckpt, map_location="cpu", weights_only=False)
    state["hyper_parameters"]["cfg"]["teacher"]["path"] = "gone/mg"  # a relative path found nowhere
    torch.save(state, ckpt)
    (run / "model.nemo").unlink(missing_ok=True)
    monkeypatch.chdir(tmp_path)
    rc = cli_main(["convert", "export-hf", "--model", str(run), "--out", "e1"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and not (tmp_path / "e1").exists() and len(err) == 1
    assert err[0] == (f"llm2clip-nemo convert export-hf: error: the teacher this model was trained with, gone/mg, is "
                      f"not found (nor relative to {ckpt.parent} or its parent directories): pass --teacher PATH "
                      f"(teacher_path=) pointing at that teacher LLM.")
    assert cli_main(["convert", "export-hf", "--model", str(run), "--out", "e2", "--teacher", str(moved)]) == 0
    # a relative path is resolved against the run: found from the run's parent directory
    (tmp_path / "gone").mkdir()
    shutil.move(str(moved), tmp_path / "gone" / "mg")
    monkeypatch.chdir(chain["root"])
    assert cli_main(["convert", "export-hf", "--model", str(run), "--out", str(tmp_path / "e3")]) == 0


# ---- online TP=2 vs offline sidecars, captions longer than 77 tokens -----------------------------

STEPS = 3


def _train_worker(rank, world, teacher_dir, shards, dim):
    import torch.distributed as dist

    from llm2clip_nemo.data.config import StreamConfig
    from llm2clip_nemo.data.stream import ImageTextStream
    from llm2clip_nemo.models.llm2clip import LLM2CLIPNetwork
    from llm2clip_nemo.runtime import init_parallel
    from llm2clip_nemo.text.config import TeacherConfig
    from llm2clip_nemo.text.teacher import Teacher

    g = init_parallel(world)  # TP=2: both ranks one teacher group, each with its own samples
    teacher = Teacher.load(teacher_dir, g, TeacherConfig(path=teacher_dir).contract())
    cfg = StreamConfig(urls=shards, batch_size=4, resampled=False, epochs=1, shard_shuffle=False,
                       open_shards=1, shuffle_buffer=1, caption_fields={"long": 1.0})
    cfg.transform.image_size = 16
    batches = list(ImageTextStream(cfg, rank=rank, world_size=world, output="embeddings",
                                   teacher_fingerprint=teacher.fingerprint, teacher_dim=dim))[:STEPS]
    from llm2clip_nemo.recipes.train_clip import TrainCLIPConfig

    mcfg = load_config(TrainCLIPConfig, None, TINY_VISION).model
    losses, lengths = {}, []
    for mode in ("online", "offline", "cut77"):
        torch.manual_seed(0)
        net = LLM2CLIPNetwork(mcfg, g, teacher_dim=dim)
        opt = torch.optim.AdamW(net.parameters(), lr=1e-3)
        losses[mode] = []
        for b in batches:
            if mode == "offline":
                emb = b["teacher_emb"]
            else:  # cut77: the former stream's 77-token cut (one word = one token for this tokenizer)
                caps = b["caption"] if mode == "online" else [" ".join(c.split()[:77]) for c in b["caption"]]
                emb = teacher.encode_online(caps, batch_size=2)
            loss = net(b["image"], emb, group=dist.group.WORLD)
            opt.zero_grad()
            loss.backward()
            for p in net.parameters():  # what DDP does
                dist.all_reduce(p.grad)
                p.grad /= world
            opt.step()
            losses[mode].append(loss.item())
    lengths = [int(m.sum()) for b in batches for m in teacher.prepare(b["caption"])[1]]
    return losses, lengths


def test_online_tp2_equals_offline_sidecars_per_step_on_long_captions(tmp_path):
    """Two gloo ranks, TP=2 teacher online vs sidecars extracted at TP=1: the same per-step losses
    (the tolerance of test_train_clip's online/offline test), on captions of 90-120 tokens."""
    from llm2clip_nemo.data.shards import ShardSample, write_shards
    from llm2clip_nemo.formats.contract import write_contract
    from llm2clip_nemo.recipes.extract import ExtractConfig
    from llm2clip_nemo.recipes.extract import run as extract

    teacher = write_tiny_llama(tmp_path / "teacher")
    write_contract(teacher, TeacherContract(bidirectional=True, max_length=120))
    import random

    rng = random.Random(3)
    samples = [ShardSample(f"{i:04d}", image_bytes(i), "png", "w1 w2",
                           {"long": " ".join(f"w{rng.randrange(98)}" for _ in range(rng.randint(10, 130)))})
               for i in range(2 * 4 * STEPS)]
    write_shards(samples, str(tmp_path / "shards"), samples_per_shard=4 * STEPS)
    extract(load_config(ExtractConfig, None, [f"data.urls={tmp_path / 'shards'}", f"teacher.path={teacher}",
                                              "data.fields=[long]", "progress=false"]))
    outs = run_workers(_train_worker, 2, str(teacher), str(tmp_path / "shards"), 64)
    lengths = [n for _, ls in outs for n in ls]
    assert max(lengths) == 120 and sum(n > 77 for n in lengths) >= 6  # long captions really exceed 77 tokens
    for losses, _ in outs:
        assert len(losses["online"]) == STEPS
        for on, off in zip(losses["online"], losses["offline"]):
            assert on == pytest.approx(off, abs=2e-3)  # fp16 storage of the sidecar
    # the tolerance tells the texts apart: the former 77-token cut misses it on some step
    assert max(abs(c - off) for losses, _ in outs for c, off in zip(losses["cut77"], losses["offline"])) > 2e-3


def test_config_error_for_teacher_contract_reaches_training_cli(tmp_path, capsys):
    from llm2clip_nemo.cli import main as cli_main
    from llm2clip_nemo.formats.contract import write_contract

    teacher = write_tiny_llama(tmp_path / "teacher")
    write_contract(teacher, TeacherContract(pooling="mean"))
    rc = cli_main(["pretrain", f"model.teacher.path={teacher}", "model.teacher.pooling=last_token",
                   f"exp_manager.exp_dir={tmp_path / 'runs'}"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and not (tmp_path / "runs").exists()
    assert err[-1] == (f"llm2clip-nemo pretrain: config error: model.teacher.pooling='last_token' disagrees with the "
                       f"teacher contract (pooling='mean' in {teacher}/teacher_contract.json): remove "
                       f"model.teacher.<field> from the config (teacher {teacher}) or set model.teacher.pooling='mean'.")
    with pytest.raises(ConfigError):
        from llm2clip_nemo.text.config import TeacherConfig

        TeacherConfig(path=str(teacher), pooling="last_token").check_available()  # validate() reads no file
