"""Stage 1 as a NeMo model: caption-contrastive LoRA fine-tuning of an LLM (LLM2CLIP's "CC" LLM).

`CaptionContrastiveModel` is a `nemo.core.ModelPT` around `CaptionEncoder` (plain torch, see
caption_encoder.py). Lightning is the outer loop (DDP over data-parallel ranks, embeddings gathered
with gradient inside the loss) with manual optimisation through `engine.TrainEngine` (AdamW on the
LoRA weights, schedule, accumulation, clipping, finite-loss skip, EMA; its state is the checkpoint,
under checkpoint["engine"]). It validates by caption retrieval accuracy (CRA) on a held-out set
(with the EMA weights when model.ema.enabled) and exports the LoRA-merged LLM as a stock Hugging
Face directory.
"""
from __future__ import annotations

from contextlib import ExitStack
from pathlib import Path

import torch
import torch.distributed as dist
from nemo.core.classes import ModelPT

from .caption_contrastive_config import (  # noqa: F401  (re-exported)
    DEFAULT_INSTRUCTION,
    DEMO,
    CaptionContrastiveModelConfig,
    CaptionDataConfig,
    check_global_batch,
)
from .caption_data import (
    BatchCursor,
    StepLoader,
    TripleSchedule,
    eval_captions,
    load_records,
    tokenize_with_instruction,
)
from .caption_encoder import CaptionEncoder
from .caption_encoder import export_merged as _export_encoder
from .nemo_base import allow_our_targets, from_dictconfig, to_dictconfig


def resolve_demo_paths(data: CaptionDataConfig) -> tuple[str, str]:
    """(train_path, val_path) with 'demo' replaced by the demo dataset's splits."""
    if DEMO not in (data.train_path, data.val_path):
        return data.train_path, data.val_path
    from ..data.demo_dataset import build_demo_dataset
    from ..formats.hf_io import default_cache_dir

    res = build_demo_dataset(str(default_cache_dir() / "demo_dataset"))
    train = res.train_urls if data.train_path == DEMO else data.train_path
    val = res.test_urls if data.val_path == DEMO else data.val_path
    return train, val


class _Batches:
    """A sized iterable of ready batches (a bare list would read as several dataloaders to Lightning)."""

    def __init__(self, batches: list):
        self.batches = batches

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self):
        return iter(self.batches)


class CaptionContrastiveModel(ModelPT):
    """NeMo ModelPT: LoRA caption-contrastive fine-tuning of a HF causal LM (+ optional MNTP phase)."""

    def __init__(self, cfg, trainer=None, layout=None):
        allow_our_targets()
        if not hasattr(cfg, "items"):  # a dataclass config
            cfg = to_dictconfig(cfg)
        schema = from_dictconfig(CaptionContrastiveModelConfig, cfg)
        super().__init__(cfg=cfg, trainer=trainer)
        self.schema = schema
        self.core = CaptionEncoder(schema)
        self.automatic_optimization = False
        self.strict_loading = False  # checkpoints hold the LoRA weights only (base weights come from llm_path)
        self._layout = layout
        """runtime.ParallelLayout (TP=1): its dp_group spreads the contrastive batch; built on first use."""
        self.engine = None
        self.cursor = BatchCursor()
        """The data position (batches trained), saved and restored by the engine."""
        self._val_ema = ExitStack()
        self.cra_history: list[tuple[int, float]] = []
        """(step, CRA by the paper's protocol) at each validation."""
        self.cra_all_pairs_history: list[tuple[int, float]] = []
        """(step, all-pairs caption retrieval accuracy) at each validation."""
        self._groups_cache: dict[str, list] = {}
        self._val_feats: list[tuple[torch.Tensor, torch.Tensor]] = []

    # ---- NeMo ModelPT API -------------------------------------------------------------------
    @classmethod
    def list_available_models(cls):
        return []  # no pretrained checkpoints on NGC: build from a HF LLM

    def setup_training_data(self, train_data_config=None):
        self._train_dl = None  # built lazily in train_dataloader(), once ranks and steps are known

    def setup_validation_data(self, val_data_config=None):
        self._validation_dl = None

    # ---- data ---------------------------------------------------------------------------------
    def _paths(self) -> tuple[str, str]:
        if "paths" not in self._groups_cache:
            self._groups_cache["paths"] = resolve_demo_paths(self.schema.data)
        return self._groups_cache["paths"]

    def _records(self, which: str):
        if which not in self._groups_cache:
            path = self._paths()[0 if which == "train" else 1]
            self._groups_cache[which] = load_records(path, self.schema.data.pair_config())
        return self._groups_cache[which]

    def _rank_world(self) -> tuple[int, int]:
        t = self._trainer
        return (t.global_rank, t.world_size) if t is not None else (0, 1)

    def train_dataloader(self):
        d = self.schema.data
        rank, world = self._rank_world()
        check_global_batch(d, world)
        accum = self.engine.micro_batches if self.engine is not None else 1
        max_steps = self._trainer.max_steps if self._trainer is not None else 1
        sched = TripleSchedule(self._records("train"), d.global_batch_size, d.pair_config())
        return StepLoader(sched, self.core.tokenizer, rank, world, max_steps * accum, d.max_length,
                          bool(d.hard_negatives), start_step=lambda: self.cursor.next_batch)

    def val_captions(self) -> tuple[list[str], list[int]]:
        return eval_captions(self._records("val"), self.schema.data.val_max_images or None)

    def val_dataloader(self):
        """This rank's contiguous share of the held-out captions, as (index, texts) batches."""
        texts, _ = self.val_captions()
        rank, world = self._rank_world()
        per = -(-len(texts) // world)
        mine = list(range(rank * per, min(len(texts), (rank + 1) * per)))
        bs = self.schema.data.val_batch_size
        return _Batches([(torch.tensor(mine[i:i + bs]), [texts[j] for j in mine[i:i + bs]])
                         for i in range(0, len(mine), bs)])

    # ---- training -----------------------------------------------------------------------------
    def forward(self, input_ids, attention_mask, pool_mask=None):
        return self.core.embed(input_ids, attention_mask, pool_mask)

    def in_mntp_phase(self) -> bool:
        return self.global_step < self.schema.mntp.steps

    @property
    def layout(self):
        """The process's parallel layout at TP=1, built once Lightning has joined the ranks."""
        if self._layout is None:
            from ..runtime import init_parallel

            self._layout = init_parallel(1, megatron=False)
        return self._layout

    def _loss(self, batch) -> torch.Tensor:
        if self.in_mntp_phase():
            gen = torch.Generator().manual_seed(self.schema.data.seed * 7919 + self.global_step)
            return self.core.mntp_loss(batch, gen)
        return self.core.contrastive_loss(batch, group=self.layout.dp_group)

    def build_engine(self, micro_batches: int = 1, throughput=None):
        """The `TrainEngine` over the LoRA weights of `self.core`, fed by `self.cursor`."""
        from ..engine import TrainEngine

        max_steps = self._trainer.max_steps if self._trainer is not None else 1
        self.engine = TrainEngine(self.core, self.schema.optim, max_steps, dp_group=None, data=self.cursor,
                                  ema=self.schema.ema, micro_batches=micro_batches, throughput=throughput)
        return self.engine

    def training_step(self, batch, batch_idx):
        self.engine.attach(self.manual_backward, self.optimizers().step)
        out = self.engine.train_step(batch, self._loss, samples=int(batch["n"]))
        for k, v in out.metrics.items():
            self.log(k, v, prog_bar=k in ("loss", "samples_per_s", "nonfinite_steps"), on_step=True, batch_size=1)
        return out.loss

    def configure_optimizers(self):
        engine = self.engine or self.build_engine()
        engine.dp_group = self.layout.dp_group  # known once Lightning has joined the ranks (not at build)
        engine.check_parameters(self.core)
        return engine.optimizer

    def on_save_checkpoint(self, checkpoint):
        """checkpoint["engine"] = `TrainEngine.state_dict()` (the LoRA weights, optimizer, EMA, data
        position, step, RNG); Lightning's copies are dropped (the frozen LLM comes from model.llm_path)."""
        checkpoint["engine"] = self.engine.state_dict()
        checkpoint["state_dict"], checkpoint["optimizer_states"], checkpoint["lr_schedulers"] = {}, [], []

    def on_load_checkpoint(self, checkpoint):
        (self.engine or self.build_engine()).load_state_dict(checkpoint["engine"])

    # ---- validation: CRA ----------------------------------------------------------------------
    @torch.no_grad()
    def embed_texts(self, texts: list[str]) -> torch.Tensor:
        """Plain captions (no instruction, as the stage-2 teacher sees them) -> [N, H] fp32."""
        d = self.schema.data
        ids, attn, pool = tokenize_with_instruction(self.core.tokenizer, texts, [""] * len(texts), d.max_length)
        dev = next(self.parameters()).device
        return self.core.embed(ids.to(dev), attn.to(dev), pool.to(dev)).float()

    def on_validation_epoch_start(self):
        self._val_feats = []
        if self.engine is not None:  # validate the EMA weights (restored at the epoch's end)
            self._val_ema.enter_context(self.engine.ema_applied())

    def validation_step(self, batch, batch_idx):
        idx, texts = batch
        self._val_feats.append((idx.cpu(), self.embed_texts(list(texts)).cpu()))

    def on_validation_epoch_end(self):
        from ..metrics import caption_retrieval_accuracy, caption_retrieval_all_pairs

        self._val_ema.close()
        texts, image_ids = self.val_captions()
        parts = self._val_feats
        if self.layout.dp_size > 1:
            gathered = [None] * self.layout.dp_size
            dist.all_gather_object(gathered, parts, group=self.layout.dp_group)
            parts = [p for g in gathered for p in g]
        idx = torch.cat([p[0] for p in parts])
        feats = torch.empty(len(texts), parts[0][1].shape[1])
        feats[idx] = torch.cat([p[1] for p in parts])
        cra = caption_retrieval_accuracy(feats, image_ids)
        all_pairs = caption_retrieval_all_pairs(feats, image_ids)
        self.cra_history.append((int(self.global_step), cra))
        self.cra_all_pairs_history.append((int(self.global_step), all_pairs))
        self.log("val_cra", cra, prog_bar=True, sync_dist=False, batch_size=1)
        self.log("val_cra_all_pairs", all_pairs, sync_dist=False, batch_size=1)
        self._val_feats = []
        return {"val_cra": cra, "val_cra_all_pairs": all_pairs}


def export_merged(model: CaptionContrastiveModel, out_dir) -> Path:
    """LoRA merged into a stock HF causal-LM directory (+ tokenizer and teacher contract, with the
    token budget of model.data.max_length), ready for `convert import-llm`."""
    return _export_encoder(model.core, out_dir, model.schema.data.max_length)
