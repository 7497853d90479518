"""`llm2clip-nemo extract --config-name extract_tiny [overrides]`: the offline teacher over a dataset.

Runs the frozen teacher over image-text shards and writes one embedding sidecar per shard.

Parallel layout: ranks form TP groups of `teacher.tensor_parallel` consecutive ranks; shards are
dealt round-robin to the groups (data parallel); inside a group every rank runs the same captions
through its TP shard and TP rank 0 writes the sidecar. Batches are length-bucketed.

Resumable and idempotent: a shard whose sidecar exists with the right key count and teacher
fingerprint is skipped; a sidecar is written to a temp file and renamed when complete, so a
killed job rerun finishes only the rest and never leaves half a sidecar behind.
"""
from __future__ import annotations

import functools
import os
import sys
import time
from dataclasses import dataclass, field
from typing import ClassVar

import torch
import torch.distributed as dist

from ..config import ConfigError, load_config, parse_command_line
from ..config.help import recipe_help, wants_help
from ..config.paths import field_path
from ..config.plan import PlanConfig
from ..data.errors import DataSourceError
from ..runtime.layout import LayoutError
from ..text.config import TeacherConfig


@dataclass
class ExtractData:
    CONFIG_PATH: ClassVar[str] = "data"
    """Path named in messages when built in Python; a recipe records its own (`config.paths`)."""

    urls: str = ""
    """Image-text shards: brace patterns, directories, manifests or energon datasets (`DIR#split`,
    metadataset .yaml), '::'-joined sources (mixing weights do not matter here: every shard is read)."""
    sidecar_dir: str = ""
    """Where sidecars go; empty = beside each shard (`shard-000000.emb.tar`)."""
    fields: list[str] = field(default_factory=lambda: ["txt", "long"])
    """Caption fields to embed per sample: 'txt' = alt text member, other names = keys of the sample json."""
    storage_dtype: str = "fp16"
    """fp16 | bf16 | int8 (per-vector scale)."""
    check_images: bool = True
    """Decode every image with the shared decoder, so samples the training stream will skip (corrupt,
    truncated, too large...) are counted here under the same reasons and not embedded. False skips the
    decode (shards from `llm2clip-nemo data build` were checked when built); image reasons then go uncounted."""

    def validate(self) -> None:
        if not self.urls:
            raise ConfigError(f"{field_path(self, 'urls')} is empty: give the image-text shards, e.g. "
                              f"{field_path(self, 'urls')}=/data/laion/{{00000..00099}}.tar")
        if self.storage_dtype not in ("fp16", "bf16", "int8"):
            raise ConfigError(f"{field_path(self, 'storage_dtype')}={self.storage_dtype!r} must be fp16, bf16 or int8.")
        if not self.fields:
            raise ConfigError(f"{field_path(self, 'fields')} is empty: name the caption fields to embed, e.g. [txt, long].")


@dataclass
class Projection:
    samples: float = 2e9
    """Dataset size to project storage and time for (e.g. Laion-2B)."""
    gpus: int = 64
    """GPUs to project time for (the measured rate per TP group is scaled by gpus / tensor_parallel)."""


@dataclass
class ExtractConfig:
    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    data: ExtractData = field(default_factory=ExtractData)
    projection: Projection = field(default_factory=Projection)
    plan: PlanConfig = field(default_factory=PlanConfig)
    """Knobs of `llm2clip-nemo plan` (capacity estimates); extraction ignores them."""
    progress: bool = True
    """Progress bar with captions/s on global rank 0."""


def shard_done(shard: str, sidecar: str, fingerprint: str, fields: list[str]) -> bool:
    """A finished sidecar: readable, same teacher and fields, one record per shard sample."""
    from ..data.sidecar import SidecarMismatchError, SidecarReader
    from ..data.tario import count_samples

    if not os.path.isfile(sidecar):
        return False
    try:
        r = SidecarReader(sidecar, fingerprint=fingerprint, fields=fields)
    except SidecarMismatchError:
        return False  # stale or foreign: recompute
    try:
        return len(r) == count_samples(shard)
    finally:
        r.close()


def read_shard_captions(shard: str, fields: list[str], check_images: bool = True, source=None
                        ) -> tuple[list[str], list[list[str | None] | None], dict[str, int]]:
    """(keys, per sample its caption per field (None: field empty) or None if skipped, problems by reason).

    Samples go through `data.samples.check_sample` (the training stream's checks; images decoded
    when `check_images`): a sample it skips keeps its key (the sidecar holds one record per shard
    sample, all zeros for it) and its reasons are counted. A list-valued field is embedded by its
    first caption. `source` (a `data.spec.Source`) applies an energon dataset's excludes and field
    map; an excluded sample keeps its key too. Raises OSError for a shard that cannot be opened."""
    from ..data.samples import ReasonCounter, check_sample
    from ..data.tario import iter_tar_samples

    keys, caps, problems = [], [], ReasonCounter()
    for raw in (iter_tar_samples(shard) if source is None else source.read(shard)):
        if raw.error is not None and raw.error.startswith("unreadable_shard"):
            raise OSError(raw.error)
        checked = check_sample(raw, fields, decode=check_images)
        problems.add(checked.reasons)
        if raw.error is not None and raw.error != "excluded":
            continue
        s = checked.sample
        keys.append(raw.key)
        caps.append(None if s is None else [next(iter(s.captions(f)), None) for f in fields])
    return keys, caps, problems.as_dict()


@dataclass
class Summary:
    done: int = 0
    skipped: int = 0
    failed: int = 0
    captions: int = 0
    missing_captions: int = 0
    bad_samples: int = 0
    """Samples not embedded because `check_sample` skips them (counted by reason in `problems`)."""
    problems: dict = field(default_factory=dict)
    seconds: float = 0.0
    bytes_written: int = 0
    failures: list = field(default_factory=list)


def run(cfg: ExtractConfig) -> dict:
    """Extract sidecars for every shard; returns the (all-reduced) summary dict on every rank."""
    from ..data.samples import SAMPLE_REASONS
    from ..data.sidecar import SidecarMeta, SidecarWriter, sidecar_path
    from ..data.spec import parse_sources
    from ..runtime import init_parallel
    from ..text.teacher import Teacher

    cfg.teacher.check_available()  # the teacher's files are read where the run starts, not by validate()
    tp_field = field_path(cfg.teacher, "tensor_parallel")
    groups = init_parallel(cfg.teacher.tensor_parallel, field=tp_field)
    teacher = Teacher.load(cfg.teacher.resolved_path(), groups, cfg.teacher.contract(), cfg.teacher.torch_dtype(),
                           tp_field=tp_field)
    shards = [(u, s) for s in parse_sources(cfg.data.urls, named=functools.partial(field_path, cfg.data)) for u in s.urls]
    mine = shards[groups.dp_rank::groups.dp_size]
    fields = list(cfg.data.fields)
    writer_rank = groups.tp_rank == 0
    summ = Summary()
    bar = None
    if cfg.progress and groups.rank == 0:
        from tqdm import tqdm

        bar = tqdm(total=len(mine), desc="extract", unit="shard", file=sys.stderr)
    t0 = time.perf_counter()
    for shard, source in mine:
        out = sidecar_path(shard, cfg.data.sidecar_dir or None)
        if _tp_agree(shard_done(shard, out, teacher.fingerprint, fields), groups):
            summ.skipped += 1
            bar and bar.update(1)
            continue
        try:
            keys, caps, problems = read_shard_captions(shard, fields, cfg.data.check_images, source)
        except OSError as e:
            summ.failed += 1
            summ.failures.append(f"{shard}: {e}")
            bar and bar.update(1)
            continue
        flat = [(i, j, c) for i, row in enumerate(caps) if row is not None for j, c in enumerate(row) if c]
        vecs = torch.zeros(len(keys), len(fields), teacher.hidden_size)
        if flat:
            emb = teacher.encode_texts([c for _, _, c in flat], batch_size=cfg.teacher.batch_size,
                                       max_tokens=cfg.teacher.max_tokens or None)
            ii = torch.tensor([i for i, _, _ in flat])
            jj = torch.tensor([j for _, j, _ in flat])
            vecs[ii, jj] = emb
        summ.captions += len(flat)
        # fields of embedded samples that hold no caption: stored as zero vectors
        summ.missing_captions += sum(len(fields) for row in caps if row is not None) - len(flat)
        summ.bad_samples += sum(n for r, n in problems.items() if r in SAMPLE_REASONS)
        for r, n in problems.items():
            summ.problems[r] = summ.problems.get(r, 0) + n
        if writer_rank:
            meta = SidecarMeta(fingerprint=teacher.fingerprint, dim=teacher.hidden_size, fields=fields,
                               pooling=teacher.contract.pooling, contract=teacher.contract.to_dict(), dtype=cfg.data.storage_dtype,
                               image_shard=os.path.basename(shard))
            with SidecarWriter(out, meta) as w:
                for k, v in zip(keys, vecs):
                    w.write(k, v)
            summ.bytes_written += os.path.getsize(out)
        summ.done += 1
        if bar:
            bar.update(1)
            bar.set_postfix(captions_s=f"{summ.captions / max(time.perf_counter() - t0, 1e-9):.1f}")
    summ.seconds = time.perf_counter() - t0
    if bar:
        bar.close()
    return _reduce(summ, groups, cfg, len(fields), teacher.hidden_size)


def _tp_agree(flag: bool, groups) -> bool:
    """TP peers must take the same branch (their forwards are collective): TP rank 0 decides."""
    if groups.tp_size == 1:
        return flag
    t = torch.tensor([int(flag)])
    dist.broadcast(t, src=dist.get_global_rank(groups.tp_group, 0), group=groups.tp_group)
    return bool(t.item())


def _reduce(s: Summary, groups, cfg: ExtractConfig, n_fields: int, dim: int) -> dict:
    """Sum counts over DP groups (TP peers did the same work), max the time; add the projection."""
    from ..data.samples import MEMBER_REASONS, SAMPLE_REASONS

    reasons = (*MEMBER_REASONS, *SAMPLE_REASONS)
    counts = torch.tensor([s.done, s.skipped, s.failed, s.captions, s.missing_captions, s.bad_samples, s.bytes_written,
                           *(s.problems.get(r, 0) for r in reasons)], dtype=torch.float64)
    if groups.dp_size > 1:
        dist.all_reduce(counts, group=groups.dp_group)
    problems = {r: int(n) for r, n in zip(reasons, counts[7:].tolist()) if n}
    counts = counts[:7]
    secs = torch.tensor([s.seconds], dtype=torch.float64)
    if groups.world_size > 1:
        dist.all_reduce(secs, op=dist.ReduceOp.MAX)
    done, skipped, failed, captions, missing, bad, nbytes = (int(x) for x in counts.tolist())
    rate = captions / secs.item() if secs.item() > 0 else 0.0
    per_group = rate / max(groups.dp_size, 1)
    bytes_per_vec = {"fp16": 2 * dim, "bf16": 2 * dim, "int8": dim + 4}[cfg.data.storage_dtype]
    proj_caps = cfg.projection.samples * n_fields
    groups_proj = max(cfg.projection.gpus // cfg.teacher.tensor_parallel, 1)
    return {
        "shards_done": done, "shards_skipped": skipped, "shards_failed": failed,
        "failures": s.failures, "captions": captions, "missing_captions": missing, "bad_samples": bad,
        "skipped_by_reason": dict(sorted(problems.items())),
        "seconds": secs.item(), "captions_per_s": rate, "bytes_written": nbytes,
        "projection": {
            "samples": cfg.projection.samples, "gpus": cfg.projection.gpus,
            "storage_tb": proj_caps * bytes_per_vec / 1e12,
            "hours_at_measured_rate": (proj_caps / (per_group * groups_proj) / 3600) if per_group > 0 else None,
            "note": "time scales this run's measured captions/s per TP group to gpus/tensor_parallel groups; "
                    "measure on the target hardware for a real estimate",
        },
    }


def format_summary(r: dict) -> str:
    p = r["projection"]
    hours = f"{p['hours_at_measured_rate']:.1f} h" if p["hours_at_measured_rate"] is not None else "n/a"
    return "\n".join([
        f"shards: {r['shards_done']} done, {r['shards_skipped']} skipped (already complete), {r['shards_failed']} failed",
        f"captions embedded: {r['captions']} ({r['missing_captions']} missing fields stored as zero vectors, "
        f"{r['bad_samples']} samples skipped)",
        f"skipped by reason (shards read this run): {r['skipped_by_reason'] or 'none'}",
        f"throughput: {r['captions_per_s']:.1f} captions/s over {r['seconds']:.1f} s; storage written {r['bytes_written'] / 1e6:.2f} MB",
        f"projection for {p['samples']:.3g} samples: {p['storage_tb']:.2f} TB of sidecars, {hours} on {p['gpus']} devices",
        *[f"failed: {f}" for f in r["failures"]],
    ])


def main(argv: list[str]) -> int:
    if wants_help(argv):
        print(recipe_help("llm2clip-nemo extract", __doc__, ExtractConfig, "extract"))
        return 0
    cl = parse_command_line("extract", argv)
    try:
        cfg = load_config(ExtractConfig, cl.config_name, cl.overrides, cl.config_path)
    except (ConfigError, ValueError) as e:
        print(f"llm2clip-nemo extract: config error: {e}", file=sys.stderr)
        return 2
    try:
        result = run(cfg)
    except (ConfigError, LayoutError) as e:  # the teacher's files (`TeacherConfig.check_available`); a TP size the ranks cannot hold
        print(f"llm2clip-nemo extract: config error: {e}", file=sys.stderr)
        return 2
    except DataSourceError as e:  # unusable data.urls (missing shards, energon constructs we do not map...)
        print(f"llm2clip-nemo extract: data error: {e}", file=sys.stderr)
        return 2
    if dist.get_rank() == 0:
        print(format_summary(result))
    return 1 if result["shards_failed"] else 0
