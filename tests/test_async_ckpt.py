"""Stage 2's checkpoints written in the background (model.parallel.async_checkpoint, issue 16) through
the real recipe on 2 gloo ranks: the same files and losses as synchronous saves, resume from them,
and the one-line refusal of a checkpoint whose background write never finished."""
from __future__ import annotations

import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from clip_fixtures import tiny_offline_setup, tiny_overrides
from dist_utils import run_workers
from fsdp_fixtures import one_rank  # noqa: F401  (fixture)

STEPS, FIRST, EVERY = 6, 4, 2
# global batch 8 read in the main process, EMA on, every checkpoint kept (save_top_k), one every EVERY steps
BASE = {"model.global_batch_size": 8, "model.num_workers": 0, "trainer.devices": 2,
        "model.validation_ds.every_n_steps": 100, "exp_manager.checkpoint_every_n_steps": EVERY,
        "exp_manager.save_top_k": 10, "model.ema.enabled": "true", "model.ema.decay": 0.9,
        "model.ema.warmup_steps": 2}
ASYNC = {"model.parallel.async_checkpoint": "true"}
CKPTS = "pretrain_tiny/checkpoints"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("async_ckpt")
    return root, *tiny_offline_setup(root, n_train=48, n_val=16)


def overrides(tiny, exp, steps=STEPS, **extra) -> list[str]:
    root, teacher, train, val = tiny
    merged = dict(o.split("=", 1) for o in tiny_overrides(teacher, train, val, root / exp, steps=steps,
                                                         **{**BASE, **extra}))
    return [f"{k}={v}" for k, v in merged.items()]


def _copy_run(root: Path, src: str, dst: str, drop: tuple[str, ...] = ()) -> None:
    """Rank 0 copies run `src` to `dst` and deletes the paths `drop` (relative to its checkpoints)."""
    shutil.copytree(root / src, root / dst)
    for rel in drop:
        p = root / dst / CKPTS / rel
        shutil.rmtree(p) if p.is_dir() else p.unlink()


def _plan_worker(rank, world, root, plan):
    """Run `plan` in order in this process: ("run", overrides) trains with `recipes.train_clip.run` and
    records (per-step losses, the `TrainEngine.save_sharded` calls as (directory name, async_save));
    ("copy", src, dst, drop) is `_copy_run` by rank 0 behind a barrier; ("cli", argv) runs the
    pretrain verb and records (exit code, its stderr lines from llm2clip-nemo)."""
    import contextlib
    import io

    import torch.distributed as dist

    from llm2clip_nemo.config import load_config
    from llm2clip_nemo.engine.engine import TrainEngine
    from llm2clip_nemo.recipes.train_clip import TrainCLIPConfig, main, run

    calls = []
    original = TrainEngine.save_sharded

    def recorded(self, path, async_save=False):
        calls.append((f"{Path(path).parent.name}/{Path(path).name}", async_save))
        return original(self, path, async_save)

    TrainEngine.save_sharded = recorded
    out = []
    for step in plan:
        if step[0] == "copy":
            if rank == 0:
                _copy_run(root, *step[1:])
            dist.barrier()
            out.append(None)
        elif step[0] == "run":
            calls.clear()
            res = run(load_config(TrainCLIPConfig, "pretrain_tiny", step[1]))
            out.append((res["losses"], list(calls)))
        else:
            err = io.StringIO()
            with contextlib.redirect_stderr(err):
                code = main(step[1], "pretrain")
            out.append((code, [line for line in err.getvalue().splitlines() if line.startswith("llm2clip-nemo")]))
    return out


@pytest.fixture(scope="module")
def runs(tiny):
    """On 2 gloo ranks, in one pair of processes: STEPS steps with synchronous and with asynchronous
    checkpoints; an async run stopped after step FIRST, then resumed (a) as it is and (b) from a copy
    without last's DCP directory (the job ended after the write, before its hard links); a copy of the
    async run with step 6 never completely written (no .metadata, no last link), resumed through the
    CLI (refused) and with exp_manager.resume_from_checkpoint at step 4 (the refusal's advice)."""
    root = tiny[0]
    broken = ("step=6.dcp/step_00000006/.metadata", "step=6-last.dcp")
    step4 = root / "fixed" / CKPTS / "step=4.ckpt"
    removed = ("step=6.ckpt", "step=6.dcp", "step=6-last.ckpt")  # what the refusal asks the user to remove
    plan = [("run", overrides(tiny, "sync")), ("run", overrides(tiny, "async", **ASYNC)),
            ("run", overrides(tiny, "resumed", FIRST, **ASYNC)),
            ("copy", "resumed", "unlinked", ("step=4-last.dcp",)),
            ("run", overrides(tiny, "resumed", **ASYNC)), ("run", overrides(tiny, "unlinked", **ASYNC)),
            ("copy", "async", "broken", broken), ("copy", "async", "fixed", (*broken, *removed)),
            ("run", overrides(tiny, "fixed", **ASYNC, **{"exp_manager.resume_from_checkpoint": step4})),
            ("cli", ["--config-name", "pretrain_tiny", *overrides(tiny, "broken", **ASYNC)])]
    per_rank = run_workers(_plan_worker, 2, root, plan)
    names = ["sync", "async", "first", None, "resumed", "unlinked", None, None, "fixed", "cli"]
    return {n: [per_rank[r][i] for r in range(2)] for i, n in enumerate(names) if n}


def _assert_same_losses(got, want, rel=1e-5):
    assert [s for s, _ in got] == [s for s, _ in want]
    for (step, a), (_, b) in zip(got, want):
        assert a == pytest.approx(b, rel=rel), f"step {step}: {a!r} vs {b!r}"


def test_async_checkpoints_equal_sync_ones(tiny, runs):
    """The async run wrote its 3 step directories in the background (last's is hard-linked from step 6
    once that write finished), the sync run the same 3 synchronously; both trained to the same per-step
    losses (exactly), and every DCP directory's model and EMA are torch.equal between the two runs."""
    from llm2clip_nemo.engine.checkpoint import read_full_state_dict

    root = tiny[0]
    written = [f"step={s}.dcp/step_{s:08d}" for s in (2, 4, 6)]
    for rank in range(2):
        (l_sync, c_sync), (l_async, c_async) = runs["sync"][rank], runs["async"][rank]
        assert [s for s, _ in l_sync] == list(range(STEPS))
        assert l_async == l_sync
        assert c_sync == [(d, False) for d in written] and c_async == [(d, True) for d in written]
    dirs = sorted(str(p.relative_to(root / "sync" / CKPTS)) for p in (root / "sync" / CKPTS).glob("*.dcp/*"))
    assert dirs == [*written[:2], "step=6-last.dcp/step_00000006", written[2]]
    for d in dirs:
        for key in ("model", "ema"):
            a = read_full_state_dict(root / "async" / CKPTS / d, key)
            s = read_full_state_dict(root / "sync" / CKPTS / d, key)
            assert set(a) == set(s) and len(s) > 10, (d, key)
            for name, want in s.items():  # megatron's `_extra_state` entries read back as None
                assert (a[name] is None) if want is None else torch.equal(a[name], want), (d, key, name)
    last, six = root / "async" / CKPTS / dirs[2], root / "async" / CKPTS / written[2]
    for f in six.iterdir():
        assert f.stat().st_ino == (last / f.name).stat().st_ino, f.name
    assert (root / "async" / "pretrain_tiny" / "model.nemo").is_file()


def test_resume_from_an_async_checkpoint_repeats_the_losses(tiny, runs):
    """Stopped after step FIRST (its last checkpoint written in the background) and resumed: steps
    0..3 and 4..5 together are the uninterrupted sync run's losses on each rank (relative 1e-5); so are
    they when last's DCP directory is missing (the job ended before the hard links: resume reads the
    complete step-4 twin) and when, as the refusal of an incomplete step 6 asks, its checkpoints are
    removed and the run resumes with exp_manager.resume_from_checkpoint=step 4 (then one last.ckpt again)."""
    for rank in range(2):
        ref = runs["sync"][rank][0]
        first = runs["first"][rank][0]
        assert [s for s, _ in first] == list(range(FIRST))
        assert [s for s, _ in runs["resumed"][rank][0]] == list(range(FIRST, STEPS))
        _assert_same_losses(first + runs["resumed"][rank][0], ref)
        _assert_same_losses(first + runs["unlinked"][rank][0], ref)
        fixed = runs["fixed"][rank][0]
        _assert_same_losses(first + fixed, ref)
    assert sorted(p.name for p in (tiny[0] / "fixed" / CKPTS).glob("*.ckpt")) == [
        "step=2.ckpt", "step=4.ckpt", "step=6-last.ckpt", "step=6.ckpt"]


def test_incomplete_checkpoint_resume_names_the_newest_complete_one(tiny, runs):
    """Resuming a run whose step-6 write never finished: exit code 2 on both ranks, one line naming the
    incomplete directory, the incomplete checkpoints to remove and the step-4 checkpoint to resume from."""
    ckpts = tiny[0] / "broken" / CKPTS
    want = (f"llm2clip-nemo pretrain: config error: {ckpts}/step=6-last.ckpt points at "
            f"{ckpts}/step=6-last.dcp/step_00000006, which was not completely written (the job ended during its "
            "write): remove the incomplete checkpoints (step=6-last.ckpt, step=6.ckpt, with their .dcp directories) "
            "and resume from step=4.ckpt, the newest complete one: "
            f"exp_manager.resume_from_checkpoint={ckpts}/step=4.ckpt")
    assert runs["cli"] == [(2, [want]), (2, [want])]


def test_incomplete_checkpoint_without_a_complete_one_says_start_afresh(tmp_path):
    """No complete checkpoint beside the incomplete one: the message says to remove the folder."""
    from llm2clip_nemo.config import ConfigError
    from llm2clip_nemo.models.checkpointing import complete_dcp_directory, newest_complete_checkpoint

    (tmp_path / "a--step=2.ckpt").write_bytes(b"")
    (tmp_path / "a--step=2.dcp" / "step_00000002").mkdir(parents=True)
    (tmp_path / "a--step=2.dcp" / "step_00000002" / "train_state.json").write_text("{}")  # no .metadata
    ckpt = tmp_path / "a--step=2.ckpt"
    assert newest_complete_checkpoint(tmp_path) is None
    with pytest.raises(ConfigError) as e:
        complete_dcp_directory(ckpt, tmp_path / "a--step=2.dcp" / "step_00000002")
    assert str(e.value) == (f"{ckpt} points at {tmp_path}/a--step=2.dcp/step_00000002, which was not completely "
                            "written (the job ended during its write) and no complete checkpoint is beside it: "
                            f"remove {tmp_path} to start afresh.")


def _host(groups):
    """The stage-2 checkpoint hooks over a TrainEngine of a Linear(4, 2), async on, one rank."""
    from llm2clip_nemo.engine import TrainEngine
    from llm2clip_nemo.engine.optim import OptimConfig
    from llm2clip_nemo.models.checkpointing import EngineCheckpointHooks

    class Host(EngineCheckpointHooks):
        typed = SimpleNamespace(parallel=SimpleNamespace(async_checkpoint=True))

        def _dp_group(self):
            return None

    host = Host()
    host.groups = groups
    torch.manual_seed(0)
    host.engine = TrainEngine(torch.nn.Linear(4, 2), OptimConfig(), 10)
    return host


def test_a_failed_background_write_is_raised_at_the_next_save(tmp_path, one_rank, monkeypatch):  # noqa: F811
    """The background write fails (a full disk): the next checkpoint save raises it (DCP's
    CheckpointException carrying the OSError), the failed directory is left incomplete, and the save
    after that writes normally."""
    from torch.distributed.checkpoint import FileSystemWriter
    from torch.distributed.checkpoint.api import CheckpointException

    from llm2clip_nemo.engine.checkpoint import is_complete

    host = _host(one_rank)

    def full_disk(self, plan, planner):
        raise OSError(28, "No space left on device")

    with monkeypatch.context() as m:
        m.setattr(FileSystemWriter, "write_data", full_disk)
        first = host.save_sharded_checkpoint({"engine": {}}, tmp_path / "a.dcp")
        host.engine.step = 1
        with pytest.raises(CheckpointException, match=r"No space left on device"):
            host.save_sharded_checkpoint({"engine": {}}, tmp_path / "b.dcp")
    assert not is_complete(first) and not (tmp_path / "b.dcp").exists()
    ckpt = {"engine": {}}
    second = host.save_sharded_checkpoint(ckpt, tmp_path / "c.dcp")
    assert ckpt["engine"]["dcp"] == "c.dcp/step_00000001" and second == tmp_path / "c.dcp" / "step_00000001"
    host.wait_for_checkpoint()
    assert is_complete(second)


def test_resume_from_checkpoint_that_is_not_a_file_names_the_fix(tmp_path):
    """exp_manager.resume_from_checkpoint naming no file: a one-line config error before any trainer is built."""
    from llm2clip_nemo.config import ConfigError, load_config
    from llm2clip_nemo.recipes.train_clip import TrainCLIPConfig
    from llm2clip_nemo.recipes.trainer import build_trainer, exp_manager_dict

    missing = tmp_path / "step=4.ckpt"
    cfg = load_config(TrainCLIPConfig, "pretrain_tiny", [f"exp_manager.resume_from_checkpoint={missing}"])
    assert exp_manager_dict(cfg.exp_manager)["resume_from_checkpoint"] == str(missing)
    with pytest.raises(ConfigError) as e:
        build_trainer(cfg)
    assert str(e.value) == f"exp_manager.resume_from_checkpoint={missing} is not a file: give the path of a .ckpt."


def test_a_fit_ending_in_error_finishes_the_write_and_resume_reads_the_twin(tmp_path, one_rank, monkeypatch):  # noqa: F811
    """A fit that raised (recipes.train_clip.finish_checkpoint_write): the pending write of step=0 is
    completed without the collective hard-linking of its same-step twin `last`, and resuming `last`
    reads the step=0 directory; a failing write is dropped there without raising over the fit's error."""
    from torch.distributed.checkpoint import FileSystemWriter

    from llm2clip_nemo.engine.checkpoint import is_complete
    from llm2clip_nemo.models.checkpointing import complete_dcp_directory
    from llm2clip_nemo.recipes.train_clip import finish_checkpoint_write

    host = _host(one_rank)
    written = host.save_sharded_checkpoint({"engine": {}}, tmp_path / "step=0.dcp")
    last = host.save_sharded_checkpoint({"engine": {}}, tmp_path / "step=0-last.dcp")
    assert host._ckpt_links == (last,)
    finish_checkpoint_write(host)
    assert is_complete(written) and not last.exists() and (host._ckpt_write, host._ckpt_links) == (None, ())
    assert complete_dcp_directory(tmp_path / "step=0-last.ckpt", last) == written

    def full_disk(self, plan, planner):
        raise OSError(28, "No space left on device")

    host.engine.step = 1
    with monkeypatch.context() as m:
        m.setattr(FileSystemWriter, "write_data", full_disk)
        failed = host.save_sharded_checkpoint({"engine": {}}, tmp_path / "step=1.dcp")
        finish_checkpoint_write(host)  # logged, not raised
    assert not is_complete(failed) and host._ckpt_write is None
