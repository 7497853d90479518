"""`llm2clip-nemo caption-contrastive --config-name caption_contrastive_tiny [overrides]`

Stage 1: CRA before training, LoRA caption-contrastive training (Lightning + NeMo exp_manager:
TensorBoard, checkpoints every N steps, resume_if_exists), CRA at each validation, and the
LoRA-merged LLM written as a stock HF directory to `<log_dir>/hf_merged`.

    from llm2clip_nemo.recipes.caption_contrastive import load, run
    result = run(load("caption_contrastive_tiny", ["trainer.max_steps=20"]))
"""
from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field

from ..config import ConfigError, load_config, parse_command_line
from ..config.help import recipe_help, wants_help
from ..config.paths import field_path
from ..models.caption_contrastive_config import CaptionContrastiveModelConfig, check_global_batch
from .trainer import ExpManagerConfig, TrainerConfig

DEFAULT_CONFIG = "caption_contrastive_tiny"


@dataclass
class CaptionContrastiveConfig:
    model: CaptionContrastiveModelConfig = field(default_factory=CaptionContrastiveModelConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    exp_manager: ExpManagerConfig = field(default_factory=ExpManagerConfig)
    seed: int = 0
    """Seed of model init (LoRA) and of dropout/MNTP noise."""
    cra_before: bool = True
    """Measure CRA on the held-out set before training."""
    export_merged: bool = True
    """Write <log_dir>/hf_merged (LoRA merged, stock HF causal LM + tokenizer) at the end."""

    def validate(self) -> None:
        """Checks of the values alone; the data paths are checked where the run starts (`run`)."""
        check_global_batch(self.model.data, self.trainer.world_size)
        if self.model.mntp.steps >= self.trainer.max_steps:
            raise ConfigError(f"{field_path(self.model.mntp, 'steps')}={self.model.mntp.steps} leaves no contrastive "
                              f"step before {field_path(self.trainer, 'max_steps')}={self.trainer.max_steps}: lower it "
                              "or raise max_steps.")


def load(config_name: str | None = DEFAULT_CONFIG, overrides: Sequence[str] = (), config_dir=None) -> CaptionContrastiveConfig:
    return load_config(CaptionContrastiveConfig, config_name, overrides, config_dir)


def run(cfg: CaptionContrastiveConfig, callbacks: Sequence = ()) -> dict:
    """Train; returns {"cra_before", "cra_after", "cra_all_pairs_before", "cra_all_pairs_after",
    "cra_history", "hf_merged", "loss_curve", "log_dir"}. CRA is the paper's protocol (each image's
    first caption against all images' second captions, `metrics.caption_retrieval_accuracy`);
    cra_all_pairs every caption against all others (`caption_retrieval_all_pairs`); both in percent.
    loss_curve: (optimizer steps done, that step's loss) of this process's steps. With model.ema.enabled,
    CRA and hf_merged use the EMA of the LoRA weights.

    `callbacks`: extra Lightning callbacks (e.g. a time budget in the demo)."""
    import lightning.pytorch as pl

    from ..models.caption_contrastive import CaptionContrastiveModel, export_merged
    from .trainer import build_trainer

    cfg.model.data.check_paths()  # the file system is read where the run starts, not by validate()
    pl.seed_everything(cfg.seed, workers=True, verbose=False)
    trainer, log_dir = build_trainer(cfg, callbacks=list(callbacks))
    model = CaptionContrastiveModel(cfg.model, trainer=trainer)
    engine = model.build_engine(micro_batches=cfg.trainer.accumulate_grad_batches)
    resume_from = trainer.ckpt_path  # set by exp_manager when a checkpoint exists
    trainer.ckpt_path = None  # validate the untrained model, not the checkpoint; fit gets it explicitly
    cra_before = all_pairs_before = None
    if cfg.cra_before:
        before = trainer.validate(model, verbose=False)[0]
        cra_before, all_pairs_before = before["val_cra"], before["val_cra_all_pairs"]
    trainer.fit(model, ckpt_path=resume_from)
    if not model.cra_history or model.cra_history[-1][0] != trainer.global_step:
        trainer.validate(model, verbose=False)
    cra_after, all_pairs_after = model.cra_history[-1][1], model.cra_all_pairs_history[-1][1]
    hf_merged = None
    if cfg.export_merged:
        hf_merged = log_dir / "hf_merged"
        if trainer.is_global_zero:
            with engine.ema_applied():  # the EMA of the LoRA weights when model.ema.enabled
                export_merged(model, hf_merged)
        trainer.strategy.barrier()
    history = [h for h in model.cra_history if h[0] > 0 or not cfg.cra_before]
    curve = [(step + 1, loss) for step, loss in engine.loss_log]  # (optimizer steps done, loss of the last one)
    return {"cra_before": cra_before, "cra_after": cra_after, "cra_all_pairs_before": all_pairs_before,
            "cra_all_pairs_after": all_pairs_after, "cra_history": history,
            "hf_merged": str(hf_merged) if hf_merged else None, "loss_curve": curve, "log_dir": str(log_dir)}


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if wants_help(argv):
        print(recipe_help("llm2clip-nemo caption-contrastive", __doc__, CaptionContrastiveConfig, "caption_contrastive"))
        return 0
    cl = parse_command_line("caption-contrastive", argv)
    try:
        cfg = load(cl.config_name or DEFAULT_CONFIG, cl.overrides, cl.config_path)
        result = run(cfg)
    except ConfigError as e:
        print(f"llm2clip-nemo caption-contrastive: config error: {e}", file=sys.stderr)
        return 2
    summary = {k: result[k] for k in ("cra_before", "cra_after", "cra_all_pairs_before", "cra_all_pairs_after",
                                      "hf_merged", "log_dir")}
    summary["final_loss"] = result["loss_curve"][-1][1] if result["loss_curve"] else None
    print(json.dumps(summary))  # one line: easy to pick out of the logs
    return 0
