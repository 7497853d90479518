"""Stage 2's checkpoint hooks: the training engine's tensors through DCP beside each Lightning .ckpt.

`EngineCheckpointHooks` is mixed into `LLM2CLIPModel` (models/llm2clip.py) ahead of NeMo's ModelPT.
It expects the host to provide `engine` (a `TrainEngine` or None), `build_engine()`, `groups` (the
run's `runtime.ParallelLayout`), `_dp_group()`, `net`, `typed` (the `LLM2CLIPConfig`),
`resolve_teacher_identity()`, `trainer` and ModelPT's `save_to`.

    .ckpt:  checkpoint["engine"] = TrainEngine.meta_state_dict() + {"dcp": "<stem>.dcp/step_N"}
            checkpoint["llm2clip"] = {teacher fingerprint, teacher path}; Lightning's weight and
            optimizer copies are emptied
    DCP:    model, optimizer and EMA tensors (sharded as trained), each rank's data position and RNG
"""
from __future__ import annotations

from pathlib import Path

from ..config import ConfigError
from ..config.paths import field_path

ENGINE_KEY = "engine"
"""Key of the engine's payload in a Lightning checkpoint (which keeps no other copy of the weights)."""


class EngineCheckpointHooks:
    """Lightning checkpoint hooks and `save_nemo` of a model trained by `engine.TrainEngine`."""

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        """checkpoint[ENGINE_KEY] = `TrainEngine.meta_state_dict()` (step, counters, EMA updates, rank 0's
        data position and RNG); the weights, optimizer state and EMA go to a DCP directory beside the
        .ckpt (`save_sharded_checkpoint`, called by the strategy), whose path is added as
        checkpoint[ENGINE_KEY]["dcp"]. Lightning's own copies of the weights and optimizer are dropped."""
        checkpoint["llm2clip"] = {"teacher_fingerprint": self.resolve_teacher_identity(),
                                  "teacher_path": self.typed.teacher.path}
        checkpoint[ENGINE_KEY] = self.engine.meta_state_dict()
        checkpoint["state_dict"], checkpoint["optimizer_states"] = {}, []

    def save_sharded_checkpoint(self, checkpoint: dict, directory: Path) -> Path:
        """Collective (every rank): write the engine's tensors for the .ckpt being saved to
        `directory/step_NNNNNNNN` (`TrainEngine.save_sharded`) and record that path, relative to the
        .ckpt's folder, as checkpoint[ENGINE_KEY]["dcp"]. When another checkpoint of the same step was
        written beside it (Lightning saves `step=N` then `last` at the same step), its files are
        hard-linked instead of written again; a complete `target` is kept. Returns the step directory."""
        import os
        import shutil

        import torch.distributed as dist

        from ..engine.checkpoint import is_complete

        target = Path(directory) / f"step_{self.engine.step:08d}"
        done = is_complete(target)
        twin = None if done else next((d for d in sorted(Path(directory).parent.glob(f"*.dcp/{target.name}"))
                                       if d != target and is_complete(d)), None)
        if twin is not None:
            group = self._dp_group()
            dist.barrier(group=group)  # every rank has decided before rank 0 creates `target`
            if self.groups.rank == 0:
                shutil.rmtree(target, ignore_errors=True)
                shutil.copytree(twin, target, copy_function=os.link)
            dist.barrier(group=group)
        elif not done:
            self.engine.save_sharded(target).wait()
        checkpoint[ENGINE_KEY]["dcp"] = f"{target.parent.name}/{target.name}"
        return target

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        """Check the teacher, then restore the engine: tensors from the checkpoint's DCP directory into
        this run's layout and world size (collective), counters from the .ckpt."""
        meta = checkpoint.get("llm2clip", {})
        fp = self.resolve_teacher_identity()
        if meta.get("teacher_fingerprint") not in (None, fp):
            raise ConfigError(
                f"the checkpoint was trained against teacher fingerprint {meta['teacher_fingerprint']} "
                f"({meta.get('teacher_path')}), but model.teacher gives {fp}: resume with the original teacher.")
        from ..engine.checkpoint import TrainingCheckpointError, read_train_state

        payload = checkpoint[ENGINE_KEY]
        engine = self.engine or self.build_engine()
        directory = Path(self.trainer.ckpt_path).parent / payload["dcp"] if "dcp" in payload else None
        try:  # a resume that does not fit this run: one line naming the fix (exit 2), before any collective
            engine.check_meta(payload)
            if directory is not None:
                read_train_state(directory)
        except (ValueError, TrainingCheckpointError) as e:
            raise ConfigError(str(e)) from None
        if directory is None:  # an in-memory payload (TrainEngine.state_dict)
            engine.load_state_dict(payload)
            return
        from ..data.errors import DataSourceError

        try:  # the data position is taken first, before the collective load: its refusal is one line too
            restored = engine.load_sharded(directory, payload)
        except (DataSourceError, TrainingCheckpointError) as e:
            raise ConfigError(str(e)) from None
        if not restored and self.groups.rank == 0:
            from nemo.utils import logging

            logging.warning("resumed with weights, optimizer and EMA restored but the data stream starting afresh "
                            f"({field_path(self.typed.train_ds, 'slots')} was changed, or the checkpoint holds no "
                            "position): samples already seen may come again.")

    def save_nemo(self, path: str | Path) -> None:
        """Collective: write `model.nemo` (ModelPT.save_to) from rank 0 with full weights, gathered from
        every rank when the network is sharded (fsdp2)."""
        from torch.distributed.tensor import DTensor

        if any(isinstance(p, DTensor) for p in self.net.parameters()):
            from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

            full = get_model_state_dict(self.net, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
            self._state_override = {f"net.{k}": v for k, v in full.items()}
        try:
            if self.groups.rank == 0:
                self.save_to(str(path))
        finally:
            self._state_override = None

    def state_dict(self, *args, **kwargs):
        """The module's state dict; during `save_nemo` of a sharded network, the gathered full one."""
        if getattr(self, "_state_override", None) is not None:
            return dict(self._state_override)
        return super().state_dict(*args, **kwargs)
