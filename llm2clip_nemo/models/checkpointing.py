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

    _ckpt_write = None
    """The `PendingSave` of the background write started by the last save (model.parallel.async_checkpoint)."""
    _ckpt_links: tuple[Path, ...] = ()
    """Same-step directories to hard-link from `_ckpt_write`'s once it is complete."""

    def save_sharded_checkpoint(self, checkpoint: dict, directory: Path) -> Path:
        """Collective (every rank): write the engine's tensors for the .ckpt being saved to
        `directory/step_NNNNNNNN` (`TrainEngine.save_sharded`) and record that path, relative to the
        .ckpt's folder, as checkpoint[ENGINE_KEY]["dcp"]. When another checkpoint of the same step was
        written beside it (Lightning saves `step=N` then `last` at the same step), its files are
        hard-linked instead of written again; a complete `target` is kept. Returns the step directory.

        With model.parallel.async_checkpoint the tensors are staged to CPU and written in the
        background: the previous write is waited for first (`wait_for_checkpoint`), and a same-step
        twin still being written is linked once it is complete (at that wait)."""
        target = Path(directory) / f"step_{self.engine.step:08d}"
        pending = self._ckpt_write
        if pending is not None and pending.path.name == target.name:  # this step is being written: link it later
            Path(directory).mkdir(parents=True, exist_ok=True)
            if target != pending.path and target not in self._ckpt_links:
                self._ckpt_links += (target,)
        else:
            self.wait_for_checkpoint()
            self._write_or_link(target)
        checkpoint[ENGINE_KEY]["dcp"] = f"{target.parent.name}/{target.name}"
        return target

    def _write_or_link(self, target: Path) -> None:
        from ..engine.checkpoint import is_complete

        if is_complete(target):
            return
        twin = next((d for d in sorted(target.parent.parent.glob(f"*.dcp/{target.name}"))
                     if d != target and is_complete(d)), None)
        if twin is not None:
            self._link_twin(twin, target)
        elif self.typed.parallel.async_checkpoint:
            self._ckpt_write = self.engine.save_sharded(target, async_save=True)
        else:
            self.engine.save_sharded(target).wait()

    def _link_twin(self, twin: Path, target: Path) -> None:
        """Collective: `target` becomes a copy of the complete `twin` made of hard links (rank 0 links)."""
        import os
        import shutil

        import torch.distributed as dist

        group = self._dp_group()
        dist.barrier(group=group)  # every rank has decided before rank 0 creates `target`
        if self.groups.rank == 0:
            shutil.rmtree(target, ignore_errors=True)
            shutil.copytree(twin, target, copy_function=os.link)
        dist.barrier(group=group)

    def wait_for_checkpoint(self, link: bool = True) -> None:
        """Collective: block until the background write of the last checkpoint is on disk, then hard-link
        its same-step twins (skipped with `link=False`: a run ending on an error, where the other ranks
        may not reach the barrier; resume then reads the twin, see `complete_dcp_directory`). No-op when
        nothing is being written. Re-raises the write's exception (DCP's CheckpointException, a BaseException, naming
        the failing rank's error, e.g. an OSError of a full disk), once: the write is dropped either way."""
        pending, links = self._ckpt_write, self._ckpt_links
        self._ckpt_write, self._ckpt_links = None, ()
        if pending is None:
            return
        pending.wait()
        for target in links if link else ():
            self._link_twin(pending.path, target)

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
                directory = complete_dcp_directory(Path(self.trainer.ckpt_path), directory)
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
        every rank when the network is sharded (fsdp2), once any background checkpoint write has ended."""
        from torch.distributed.tensor import DTensor

        self.wait_for_checkpoint()

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


def complete_dcp_directory(ckpt: Path, directory: Path) -> Path:
    """The DCP directory to resume `ckpt` from: `directory` (the one it records) when complete, else a
    complete directory of the same step beside it (a twin whose background write finished but whose
    hard links the job did not live to make). Raises ConfigError when there is none, naming the
    newest complete checkpoint in `ckpt`'s folder to resume from instead."""
    from ..engine.checkpoint import is_complete

    if is_complete(directory):
        return directory
    twin = next((d for d in sorted(ckpt.parent.glob(f"*.dcp/{directory.name}")) if is_complete(d)), None)
    if twin is not None:
        return twin
    problem = f"{ckpt} points at {directory}, which was not completely written (the job ended during its write)"
    earlier = newest_complete_checkpoint(ckpt.parent, exclude=ckpt)
    if earlier is None:
        raise ConfigError(f"{problem} and no complete checkpoint is beside it: remove {ckpt.parent} to start afresh.")
    broken = ", ".join(c.name for c in incomplete_checkpoints(ckpt.parent))
    raise ConfigError(f"{problem}: remove the incomplete checkpoints ({broken}, with their .dcp directories) and "
                      f"resume from {earlier.name}, the newest complete one: exp_manager.resume_from_checkpoint={earlier}")


def newest_complete_checkpoint(folder: Path, exclude: Path | None = None) -> Path | None:
    """The .ckpt in `folder` (other than `exclude`) whose `<stem>.dcp/step_N` is complete, of the highest
    step N (ties: the last name); None when there is none."""
    from ..engine.checkpoint import is_complete

    found = []
    for d in folder.glob("*.dcp/step_*"):
        ckpt = d.parent.with_suffix(".ckpt")
        step = d.name[len("step_"):]
        if ckpt != exclude and step.isdigit() and ckpt.is_file() and is_complete(d):
            found.append((int(step), ckpt.name, ckpt))
    return max(found)[2] if found else None


def incomplete_checkpoints(folder: Path) -> list[Path]:
    """The .ckpt files in `folder` whose `<stem>.dcp/` holds no complete step directory, sorted by name."""
    from ..engine.checkpoint import is_complete

    return sorted(c for c in folder.glob("*.ckpt") if not any(is_complete(d) for d in c.with_suffix(".dcp").glob("step_*")))
