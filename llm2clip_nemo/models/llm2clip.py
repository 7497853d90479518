"""Stage 2: `LLM2CLIPModel`, a CLIP vision tower trained against a frozen LLM teacher.

    image -> ViT (megatron TransformerBlock) -> image features ┐
                                                              ├─ CLIP InfoNCE / SigLIP (gathered over all ranks)
    caption -> frozen LLM teacher -> adapter -> text features ┘

Teacher `online`: the tensor-parallel teacher embeds each batch's captions, prepared by its
contract and padded per length bucket (DESIGN, "Parallel layout"); `offline`: embeddings come from sidecars written by `extract`. The teacher is never a
registered submodule: it stays out of DDP, the optimizer and training checkpoints, which record
only its fingerprint (and refuse to resume against another teacher).

`LLM2CLIPModel` is a thin NeMo/Lightning adapter (manual optimisation) over `engine.TrainEngine`,
which owns the optimizer, layer-wise lr decay, schedule, clipping, the finite-loss skip, EMA,
throughput and the checkpoint payload; its checkpoint hooks (DCP tensors beside each .ckpt) are
`models.checkpointing.EngineCheckpointHooks`.
"""
from __future__ import annotations

from contextlib import nullcontext
from pathlib import Path

import torch
from torch import nn

from ..config.paths import config_path, field_path, replace_config, set_config_path
from ..text.adapter import check_teacher_dim
from ..text.config import teacher_hidden_size
from .checkpointing import ENGINE_KEY, EngineCheckpointHooks  # noqa: F401  (ENGINE_KEY re-exported)
from .llm2clip_config import LLM2CLIPConfig, LossConfig, OptimConfig, ValidationConfig  # noqa: F401  (re-exported)
from .network import LLM2CLIPNetwork, init_vision_from_hf, layer_id  # noqa: F401  (re-exported)

# ---- the NeMo model ------------------------------------------------------------------------------

def _model_pt():
    from nemo.core.classes import ModelPT

    return ModelPT


class LLM2CLIPModel(EngineCheckpointHooks, _model_pt()):
    """NeMo ModelPT for stage 2. Build with `LLM2CLIPModel(cfg_dictconfig, trainer)`."""

    def __init__(self, cfg, trainer=None, groups=None, teacher=None):
        from ..runtime import init_parallel, seed_everything
        from .nemo_base import allow_our_targets, from_dictconfig

        allow_our_targets()
        super().__init__(cfg=cfg, trainer=trainer)
        self.typed: LLM2CLIPConfig = from_dictconfig(LLM2CLIPConfig, self._cfg)
        tc = self.typed
        if not self._is_model_being_restored():
            self._record_absolute_teacher_path()
        self.groups = groups or init_parallel(tc.teacher.tensor_parallel)
        seed_everything(tc.seed)
        self.net = LLM2CLIPNetwork(tc, self.groups, teacher_hidden_size(tc.teacher))
        if tc.mode == "finetune" and not self._is_model_being_restored():
            init_vision_from_hf(self.net, tc.init_from)
        self.automatic_optimization = False
        self.strict_loading = False  # the weights travel in checkpoint["engine"], not Lightning's state_dict
        self._teacher = [teacher]  # a list: never registered as a submodule
        self.teacher_fingerprint = None
        self._stream = None
        self.engine = None
        self._parallelized = False
        self._stepped = False
        self.val_history: list[dict] = []

    # -- teacher ---------------------------------------------------------------------------------
    def _record_absolute_teacher_path(self) -> None:
        """Checkpoints and model.nemo store the config: an absolute teacher path keeps them usable
        from any working directory (`convert export-hf`, `evaluate`)."""
        from omegaconf import open_dict

        from ..text.config import EMBEDDED

        tc = self.typed.teacher
        if tc.path != EMBEDDED and not Path(tc.path).is_absolute():
            tc.path = str(Path(tc.path).resolve())
            with open_dict(self._cfg):
                self._cfg.teacher.path = tc.path

    @property
    def teacher(self):
        """The frozen teacher (online mode, or validation in online mode), built on first use."""
        if self._teacher[0] is None:
            from ..text.teacher import Teacher

            tc = self.typed.teacher
            self._teacher[0] = Teacher.load(tc.resolved_path(), self.groups, tc.contract(), tc.torch_dtype(),
                                            tp_field=field_path(tc, "tensor_parallel"))
        return self._teacher[0]

    def resolve_teacher_identity(self) -> str:
        """Fingerprint of the configured teacher; checks the adapter's input size against it."""
        if self.teacher_fingerprint is None:
            tc = self.typed.teacher
            if self.typed.teacher_mode == "online" or self._teacher[0] is not None:
                fp, dim = self.teacher.fingerprint, self.teacher.hidden_size
            else:
                from ..text.config import expected_fingerprint

                fp, dim = expected_fingerprint(tc), teacher_hidden_size(tc)
            check_teacher_dim(self.net.adapter.input_dim, dim)
            self.teacher_fingerprint = fp
        return self.teacher_fingerprint

    # -- data --------------------------------------------------------------------------------------
    def build_stream(self):
        from ..data.stream import ImageTextStream

        tc = self.typed
        ds = tc.train_ds
        offline = tc.teacher_mode == "offline"
        return ImageTextStream(ds, rank=self.groups.rank, world_size=self.groups.world_size, output=tc.stream_output,
                               teacher_fingerprint=self.resolve_teacher_identity() if offline else None,
                               teacher_dim=self.net.adapter.input_dim if offline else None)

    def setup_training_data(self, train_data_config=None):
        if "typed" not in self.__dict__:  # ModelPT.__init__ calls this before our fields exist
            return
        if self._stream is None:  # once: the engine holds this stream and restores its position
            self._stream = self.build_stream()

    def setup_validation_data(self, val_data_config=None):
        pass

    def train_dataloader(self):
        """A plain DataLoader: the engine records the position of each batch it trains on. (Lightning
        fetches one batch ahead, so tracking at yield time would make a resumed run skip the batch
        that was prefetched but never trained on.)"""
        from torch.utils.data import DataLoader

        if self._stream is None:
            self.setup_training_data()
        nw = self.typed.num_workers
        loader = DataLoader(self._stream, batch_size=None, num_workers=nw, persistent_workers=False,
                            prefetch_factor=2 if nw > 0 else None)
        ds = self.typed.train_ds
        if ds.resampled or ds.epochs is None:
            return loader  # endless: the trainer counts steps
        from ..engine.finite import StopTogether

        return StopTogether(loader, self._dp_group(), self.groups.device, self._data_ended)

    def _data_ended(self) -> None:
        """Finite epoch mode: the first rank's data ended; every rank stops here (trainer.should_stop)."""
        if self.trainer is not None and not self.trainer.should_stop:
            if self.groups.rank == 0:
                from nemo.utils import logging

                logging.info(f"data: the last of data.epochs={self.typed.train_ds.epochs} ended on one of the ranks "
                             f"at step {self.trainer.global_step}: training stops on every rank")
            self.trainer.should_stop = True

    @classmethod
    def list_available_models(cls):
        return None

    # -- training ----------------------------------------------------------------------------------
    def teacher_embeddings(self, batch) -> torch.Tensor:
        if self.typed.teacher_mode == "offline":
            return batch["teacher_emb"]
        t = self.typed.teacher
        if "captions" not in batch:
            return self.teacher.encode_online(batch["caption"], t.batch_size, t.max_tokens or None)
        mask = batch["caption_mask"]  # caption_sampling=all: embed the present captions only
        texts = [c for row, m in zip(batch["captions"], mask.tolist()) for c, ok in zip(row, m) if ok]
        emb = self.teacher.encode_online(texts, t.batch_size, t.max_tokens or None)
        out = emb.new_zeros((*mask.shape, emb.shape[-1]))
        out[mask.to(emb.device)] = emb
        return out

    def build_engine(self, log_path: str | Path | None = None, throughput=None, micro_batches: int = 1):
        """The `TrainEngine` of this run over `self.net`, the training stream and the vision DP group
        (`log_path`: losses.jsonl, written by rank 0; `throughput`: see TrainEngine)."""
        from ..engine import TrainEngine

        tc = self.typed
        self.setup_training_data()
        self.parallelize()
        self.engine = TrainEngine(
            self.net, tc.optim, self.trainer.max_steps, layer_of=lambda n: layer_id(n, tc.vision.num_layers),
            num_layers=tc.vision.num_layers, dp_group=self._dp_group(), data=self._stream, ema=tc.ema,
            micro_batches=micro_batches, throughput=throughput, log_path=log_path, write_log=self.groups.rank == 0,
            extra_metrics=lambda: {"logit_scale": self.net.loss.scale().item()})
        return self.engine

    def parallelize(self) -> None:
        """Apply `model.parallel` to `self.net` once (`engine.parallelize`: activation checkpointing,
        compile, then ddp = composable replicate or fsdp2 = fully_shard) over the vision DP group, after
        moving it to this rank's device. Called before the optimizer is built: fsdp2 replaces the
        parameters by sharded DTensors. Lightning then must not wrap the module (recipes/trainer.py
        `SelfParallelStrategy`). Under fsdp2, `image_features`/`text_features` (validation, export)
        gather the weights like `forward` does."""
        if self._parallelized:
            return
        from ..engine.parallelize import parallelize

        self.net.to(self.groups.device)
        parallelize(self.net, self.typed.parallel, self._dp_group())
        if self.typed.parallel.data_parallel == "fsdp2":
            from torch.distributed.fsdp import register_fsdp_forward_method

            for name in ("image_features", "text_features"):
                register_fsdp_forward_method(self.net, name)
        self._parallelized = True

    def configure_optimizers(self):
        engine = self.engine or self.build_engine()
        engine.check_parameters(self.net)
        return engine.optimizer

    def _dp_group(self):
        """The vision tower's data-parallel group (every rank) of the run's layout."""
        return self.groups.vision_dp_group

    def _loss(self, batch) -> torch.Tensor:
        emb = self.teacher_embeddings(batch)
        mask = batch.get("caption_mask")
        return self.net(batch["image"].to(self.device), emb.to(self.device), group=self._dp_group(),
                        caption_mask=None if mask is None else mask.to(self.device))

    def training_step(self, batch, batch_idx):
        self.engine.attach(self.manual_backward, self.optimizers().step)
        out = self.engine.train_step(batch, self._loss, samples=batch["image"].shape[0])
        self._stepped = out.stepped
        for k, v in out.metrics.items():
            self.log(k, v, prog_bar=k in ("loss", "logit_scale", "samples_per_s", "mfu", "nonfinite_steps"), batch_size=1)
        return out.loss if out.stepped else None

    # -- held-out retrieval ------------------------------------------------------------------------
    def on_train_batch_end(self, outputs, batch, batch_idx):
        every = self.typed.validation_ds.every_n_steps
        step = self.trainer.global_step
        if (self._stepped and self.typed.validation_ds.urls and every and step % every == 0
                and step < self.trainer.max_steps):
            self.run_validation()

    def on_train_end(self):
        self.wait_for_checkpoint()  # after NeMo's callback saved the last checkpoint (callbacks' hooks run first)
        if self.typed.validation_ds.urls:
            self.run_validation()

    def validation_stream(self):
        """Every held-out sample once, in shard order, centre-cropped, with its caption's teacher input."""

        from ..data.stream import ImageTextStream

        tc, vc = self.typed, self.typed.validation_ds
        ds = replace_config(tc.train_ds, urls=vc.urls, resampled=False, epochs=1, shard_shuffle=False, open_shards=1,
                        shuffle_buffer=1, caption_fields={vc.caption_field: 1.0}, caption_sampling="one", sidecar_dir=vc.sidecar_dir or None,
                        drop_last=False, upsampling_factors=None, weights=None, blend=False,
                        transform=replace_config(tc.train_ds.transform, train=False,
                                             image_size=vc.image_size or tc.vision.image_size))
        vp = config_path(vc)  # its urls, sidecar_dir and caption field are model.validation_ds's, the rest train_ds's
        set_config_path(ds, config_path(tc.train_ds), aliases={"urls": f"{vp}.urls", "sidecar_dir": f"{vp}.sidecar_dir",
                                                               "caption_fields": f"{vp}.caption_field"})
        offline = tc.teacher_mode == "offline"
        return ImageTextStream(ds, rank=0, world_size=1, output=tc.stream_output,
                               teacher_fingerprint=self.resolve_teacher_identity() if offline else None,
                               teacher_dim=self.net.adapter.input_dim if offline else None)

    @torch.no_grad()
    def held_out_features(self) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
        """(image feats, text feats, keys) of the held-out set, L2-normalised, in the model's current state."""
        was = self.net.training
        self.net.eval()
        imgs, txts, keys = [], [], []
        n = 0
        try:
            for batch in self.validation_stream():
                imgs.append(self.encode_images(batch["image"]).cpu())
                txts.append(self.encode_teacher_embeddings(self.teacher_embeddings(batch)).cpu())
                keys += batch["key"]
                n += len(batch["key"])
                if n >= self.typed.validation_ds.max_samples:
                    break
        finally:
            self.net.train(was)
            if hasattr(self.net, "reshard"):  # fsdp2: the root group stays gathered after a forward without
                self.net.reshard()           # backward; a stale gathered copy would shadow the next weight update
        m = self.typed.validation_ds.max_samples
        return torch.cat(imgs)[:m], torch.cat(txts)[:m], keys[:m]

    def run_validation(self) -> dict:
        """Held-out retrieval R@1/R@5 (with the EMA weights when model.ema.enabled), logged as val/*."""
        from ..metrics import retrieval_metrics

        with self.engine.ema_applied() if self.engine is not None else nullcontext():
            img, txt, _ = self.held_out_features()
        r = retrieval_metrics(img, txt, torch.arange(len(img)), ks=(1, 5))
        r = {k: float(v) for k, v in r.items()}
        r["step"] = int(self.trainer.global_step) if self._trainer is not None else 0
        r["samples"] = len(img)
        self.val_history.append(r)
        if self._trainer is not None and self.logger is not None and self.groups.rank == 0:
            self.logger.log_metrics({f"val/{k}": v for k, v in r.items() if k.startswith(("i2t", "t2i", "mean"))},
                                    step=r["step"])
        return r

    # -- inference ---------------------------------------------------------------------------------
    @torch.no_grad()
    def encode_images(self, pixels: torch.Tensor) -> torch.Tensor:
        return nn.functional.normalize(self.net.image_features(pixels.to(self.device)).float(), dim=-1)

    @torch.no_grad()
    def encode_teacher_embeddings(self, emb: torch.Tensor) -> torch.Tensor:
        return nn.functional.normalize(self.net.text_features(emb.to(self.device)).float(), dim=-1)

