"""Stage 2: `LLM2CLIPModel`, a CLIP vision tower trained against a frozen LLM teacher.

    image -> ViT (megatron TransformerBlock) -> image features ┐
                                                              ├─ CLIP InfoNCE / SigLIP (gathered over all ranks)
    caption -> frozen LLM teacher -> adapter -> text features ┘

Teacher `online`: the tensor-parallel teacher embeds each batch's captions, prepared by its
contract and padded per length bucket (DESIGN, "Parallel layout"); `offline`: embeddings come from sidecars written by `extract`. The teacher is never a
registered submodule: it stays out of DDP, the optimizer and training checkpoints, which record
only its fingerprint (and refuse to resume against another teacher).

Optimisation is manual (one optimizer step per batch) so that a non-finite loss can skip the step
on every rank at once, with gradient clipping, layer-wise lr decay and warmup + cosine done here.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn

from ..config import ConfigError
from ..losses import ClipInfoNCELoss, MultiPositiveInfoNCELoss, MultiPositiveSigLIPLoss, SigLIPLoss
from ..text.adapter import LLM2CLIPAdapter, check_teacher_dim
from ..text.config import teacher_hidden_size
from .llm2clip_config import LLM2CLIPConfig, LossConfig, OptimConfig, ValidationConfig  # noqa: F401  (re-exported)

# ---- the network (no training logic) -------------------------------------------------------------

class LLM2CLIP(nn.Module):
    """Vision tower + text adapter + loss parameters. The teacher is held outside (see module doc)."""

    def __init__(self, cfg: LLM2CLIPConfig, groups, teacher_dim: int):
        """`teacher_dim`: the teacher's hidden size (`text.config.teacher_hidden_size`), the adapter's input."""
        super().__init__()
        from ..vision.vit import VisionTransformer

        self.vision = VisionTransformer(cfg.vision, groups)
        self.adapter = LLM2CLIPAdapter(cfg.adapter, teacher_dim, cfg.vision.embed_dim)
        lc = cfg.loss
        self.multi_positive = cfg.train_ds.caption_sampling == "all"
        if lc.kind == "clip":
            cls = MultiPositiveInfoNCELoss if self.multi_positive else ClipInfoNCELoss
            self.loss = cls(lc.init_logit_scale, lc.max_logit_scale)
        else:
            init = lc.init_logit_scale if lc.init_logit_scale != math.log(1 / 0.07) else math.log(10)
            cls = MultiPositiveSigLIPLoss if self.multi_positive else SigLIPLoss
            self.loss = cls(init_logit_scale=init, max_logit_scale=lc.max_logit_scale)

    def image_features(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.vision(pixels)

    def text_features(self, teacher_emb: torch.Tensor) -> torch.Tensor:
        """[..., teacher dim] teacher embeddings -> [..., joint dim] text features (any leading dims)."""
        return self.adapter(teacher_emb.to(next(self.adapter.parameters()).dtype))

    def forward(self, pixels, teacher_emb, group=None, caption_mask=None) -> torch.Tensor:
        """Loss of pixels [B,3,S,S] and teacher_emb [B,dim] (one caption per image) or, with
        train_ds.caption_sampling=all, [B,K,dim] and caption_mask bool [B,K] (the multi-positive losses)."""
        if self.multi_positive:
            return self.loss(self.image_features(pixels), self.text_features(teacher_emb), caption_mask, group=group)
        return self.loss(self.image_features(pixels), self.text_features(teacher_emb), group=group)


def layer_id(name: str, num_layers: int) -> int:
    """0 for the ViT stem, i+1 for block i, L+1 for the head (and everything outside the ViT)."""
    if not name.startswith("vision."):
        return num_layers + 1
    rest = name[len("vision."):]
    if rest.startswith("decoder.layers."):
        return int(rest.split(".")[2]) + 1
    if rest.split(".")[0] in ("patch_embed", "class_token", "position_embeddings", "pre_layernorm"):
        return 0
    return num_layers + 1


def param_groups(net: LLM2CLIP, oc: OptimConfig, num_layers: int) -> list[dict]:
    """AdamW groups: (layer id, decay or not) -> lr scale; no decay on biases, norms, logit scale/bias."""
    groups: dict[tuple[int, bool], dict] = {}
    for name, p in net.named_parameters():
        if not p.requires_grad:
            continue
        no_decay = p.ndim < 2 or "logit_" in name or "norm" in name
        lid = layer_id(name, num_layers)
        key = (lid, no_decay)
        if key not in groups:
            groups[key] = {"params": [], "names": [], "weight_decay": 0.0 if no_decay else oc.weight_decay,
                           "lr_scale": oc.layer_decay ** (num_layers + 1 - lid)}
        groups[key]["params"].append(p)
        groups[key]["names"].append(name)
    return [groups[k] for k in sorted(groups)]


def lr_at(step: int, oc: OptimConfig, max_steps: int) -> float:
    """Warmup (linear from lr/warmup) then cosine to min_lr_ratio * lr, by optimizer step."""
    if oc.warmup_steps and step < oc.warmup_steps:
        return oc.lr * (step + 1) / oc.warmup_steps
    span = max(max_steps - oc.warmup_steps, 1)
    t = min(max(step - oc.warmup_steps, 0) / span, 1.0)
    return oc.lr * (oc.min_lr_ratio + (1 - oc.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * t)))


def init_vision_from_hf(net: LLM2CLIP, path: str) -> None:
    """finetune: copy a HF CLIP or SigLIP vision checkpoint into the ViT (shapes must match model.vision)."""
    from ..formats.vision_checkpoint import match_vision_architecture, vit_from_hf

    hf_cfg, sd = vit_from_hf(path)
    mine = net.vision.cfg
    match_vision_architecture(mine, hf_cfg, f"model.init_from={path}")  # the config load adopted or checked it
    if mine.family != "siglip" and ("projection.weight" not in sd or sd["projection.weight"].shape[0] != mine.embed_dim):
        # the projection head is re-initialised (as in LLM2CLIP's fine-tune) when absent or resized
        sd["projection.weight"] = net.vision.projection.weight.detach().clone()
    net.vision.load_canonical_state_dict(sd)


# ---- the NeMo model ------------------------------------------------------------------------------

def _model_pt():
    from nemo.core.classes import ModelPT

    return ModelPT


class LLM2CLIPModel(_model_pt()):
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
        self.net = LLM2CLIP(tc, self.groups, teacher_hidden_size(tc.teacher))
        if tc.mode == "finetune" and not self._is_model_being_restored():
            init_vision_from_hf(self.net, tc.init_from)
        self.automatic_optimization = False
        self._teacher = [teacher]  # a list: never registered as a submodule
        self.teacher_fingerprint = None
        self.nonfinite_steps = 0
        self.loss_log: list[tuple[int, float]] = []
        self._stream = None
        self.val_history: list[dict] = []
        self.loss_log_path: Path | None = None

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
            self._teacher[0] = Teacher.load(tc.resolved_path(), self.groups, tc.contract(), tc.torch_dtype())
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
        self._stream = self.build_stream()
        if getattr(self, "_pending_stream_state", None) is not None:
            self._stream.load_state_dict(self._pending_stream_state)
            self._pending_stream_state = None

    def setup_validation_data(self, val_data_config=None):
        pass

    def train_dataloader(self):
        """A plain DataLoader: the position is tracked in `training_step`, for the batch actually
        trained on. (Lightning fetches one batch ahead, so tracking at yield time would make a
        resumed run skip the batch that was prefetched but never trained on.)"""
        from torch.utils.data import DataLoader

        if self._stream is None:
            self.setup_training_data()
        nw = self.typed.num_workers
        return DataLoader(self._stream, batch_size=None, num_workers=nw, persistent_workers=False,
                          prefetch_factor=2 if nw > 0 else None)

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

    def configure_optimizers(self):
        oc = self.typed.optim
        groups = param_groups(self.net, oc, self.typed.vision.num_layers)
        for g in groups:
            g.pop("names")
        return torch.optim.AdamW(groups, lr=oc.lr, betas=tuple(oc.betas), eps=oc.eps)

    def _all_finite(self, loss: torch.Tensor) -> bool:
        flag = torch.tensor([float(torch.isfinite(loss).item())], device=self.groups.device)  # nccl: on the GPU
        if self.groups.world_size > 1:
            dist.all_reduce(flag, op=dist.ReduceOp.MIN, group=self.groups.vision_dp_group)
        return bool(flag.item())

    def training_step(self, batch, batch_idx):
        self._stream.track(batch)
        opt = self.optimizers()
        step = self.trainer.global_step
        lr = lr_at(step, self.typed.optim, self.trainer.max_steps)
        for g in opt.optimizer.param_groups:
            g["lr"] = lr * g["lr_scale"]
        group = self.groups.vision_dp_group  # the ViT's data-parallel group: all ranks
        emb = self.teacher_embeddings(batch)
        mask = batch.get("caption_mask")
        loss = self.net(batch["image"].to(self.device), emb.to(self.device), group=group,
                        caption_mask=None if mask is None else mask.to(self.device))
        opt.zero_grad(set_to_none=True)
        if not self._all_finite(loss):
            self.nonfinite_steps += 1
            self.log("nonfinite_steps", float(self.nonfinite_steps), prog_bar=True, batch_size=1)
            if self.nonfinite_steps > self.typed.optim.max_nonfinite_steps:
                raise RuntimeError(
                    f"{self.nonfinite_steps} steps had a NaN/inf loss (limit model.optim.max_nonfinite_steps="
                    f"{self.typed.optim.max_nonfinite_steps}): lower model.optim.lr, check the data, or resume from "
                    "an earlier checkpoint.")
            return None
        self.manual_backward(loss)
        if self.typed.optim.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(self.net.parameters(), self.typed.optim.grad_clip)
        opt.step()
        value = loss.detach().item()
        self.loss_log.append((step, value))
        if self.loss_log_path is not None and self.groups.rank == 0:
            with open(self.loss_log_path, "a") as f:
                f.write(json.dumps({"step": step, "loss": value, "lr": lr,
                                    "logit_scale": self.net.loss.scale().item()}) + "\n")
        self.log("loss", value, prog_bar=True, batch_size=batch["image"].shape[0])
        self.log("logit_scale", self.net.loss.scale().item(), prog_bar=True, batch_size=1)
        self.log("lr", lr, batch_size=1)
        return loss.detach()

    # -- held-out retrieval ------------------------------------------------------------------------
    def on_train_batch_end(self, outputs, batch, batch_idx):
        every = self.typed.validation_ds.every_n_steps
        step = self.trainer.global_step
        if self.typed.validation_ds.urls and every and step % every == 0 and step < self.trainer.max_steps:
            self.run_validation()

    def on_train_end(self):
        if self.typed.validation_ds.urls:
            self.run_validation()

    def validation_stream(self):
        """Every held-out sample once, in shard order, centre-cropped, with its caption's teacher input."""
        import dataclasses as dc

        from ..data.stream import ImageTextStream

        tc, vc = self.typed, self.typed.validation_ds
        ds = dc.replace(tc.train_ds, urls=vc.urls, resampled=False, epochs=1, shard_shuffle=False, open_shards=1,
                        shuffle_buffer=1, caption_fields={vc.caption_field: 1.0}, caption_sampling="one", sidecar_dir=vc.sidecar_dir or None,
                        drop_last=False, upsampling_factors=None, weights=None, blend=False,
                        transform=dc.replace(tc.train_ds.transform, train=False,
                                             image_size=vc.image_size or tc.vision.image_size))
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
        m = self.typed.validation_ds.max_samples
        return torch.cat(imgs)[:m], torch.cat(txts)[:m], keys[:m]

    def run_validation(self) -> dict:
        from ..metrics import retrieval_metrics

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

    # -- checkpoints: data position in, teacher out ------------------------------------------------
    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["llm2clip"] = {
            "teacher_fingerprint": self.resolve_teacher_identity(),
            "teacher_path": self.typed.teacher.path,
            "nonfinite_steps": self.nonfinite_steps,
            "stream_state": self._stream.state_dict() if self._stream is not None else None,
        }

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        meta = checkpoint.get("llm2clip", {})
        fp = self.resolve_teacher_identity()
        if meta.get("teacher_fingerprint") not in (None, fp):
            raise ConfigError(
                f"the checkpoint was trained against teacher fingerprint {meta['teacher_fingerprint']} "
                f"({meta.get('teacher_path')}), but model.teacher gives {fp}: resume with the original teacher.")
        self.nonfinite_steps = meta.get("nonfinite_steps", 0)
        self._pending_stream_state = meta.get("stream_state")
        if self._stream is not None and self._pending_stream_state is not None:
            self._stream.load_state_dict(self._pending_stream_state)
            self._pending_stream_state = None

    # -- inference ---------------------------------------------------------------------------------
    @torch.no_grad()
    def encode_images(self, pixels: torch.Tensor) -> torch.Tensor:
        return nn.functional.normalize(self.net.image_features(pixels.to(self.device)).float(), dim=-1)

    @torch.no_grad()
    def encode_teacher_embeddings(self, emb: torch.Tensor) -> torch.Tensor:
        return nn.functional.normalize(self.net.text_features(emb.to(self.device)).float(), dim=-1)

