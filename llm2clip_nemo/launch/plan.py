"""Capacity planner: FLOPs, memory per GPU, throughput, wall time and embedding storage for a run.

    llm2clip-nemo plan --config-name pretrain_large plan.gpus=256 plan.samples=2e9
    llm2clip-nemo plan --config-name pretrain_large model.teacher_mode=online plan.teacher_preset=qwen3-8b
    plan(vision={"width": 1024, "layers": 24, ...}, teacher={...}, batch=32768, gpus=256)

The CLI reads the recipe's typed config (stage 2: TrainCLIPConfig; extract: ExtractConfig) with its
overrides merged, field by field: the teacher mode (offline: no teacher FLOPs or memory in the
step), every caption field the sidecars hold, the teacher's TP and max_length, and its shape from
`plan.teacher_preset`, a Megatron teacher dir (`hf/config.json`), a HF dir (`config.json`) or the
embedded SmolLM2.

The vision tower and adapter are counted as a run counts them (`runtime.flops`, `ViTConfig`,
`AdapterConfig`), the peak is the run's table (`runtime.flops.GPU_PEAKS`), the teacher's TP is checked
by the run's rule (`recipes.train_clip.check_teacher_tp` -> `runtime.layout.check_tp`). The teacher
and memory formulas: `launch.plan_counts`; the shapes they read: `launch.plan_shapes`; the table:
`launch.plan_report`.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from ..config.plan import DEFAULT_SAMPLES, PlanConfig
from ..runtime.flops import (
    GPU_PEAKS,
    adapter_forward_flops,
    train_flops_per_sample,
    vision_forward_flops,
)
from ..runtime.layout import TP_FIELD, check_tp
from ..text.adapter import AdapterConfig
from .plan_counts import llama_forward_flops, llama_param_count, offline_storage_bytes, vit_activation_bytes
from .plan_report import format_table
from .plan_shapes import TEACHER_PRESETS, TeacherShape, checkpoint_shape, preset_shape, teacher_shape, vision_shape


def default_peak_tflops(gpu: str = PlanConfig.gpu, precision: str = "bf16") -> float:
    """Dense peak TFLOP/s of `gpu` (a name of `runtime.flops.GPU_PEAKS`, the table a run's MFU uses) at
    `precision` ('bf16', or 'fp8' for a tower trained with vision.fp8, as the run's MFU counts it).
    ValueError naming plan.gpu and the choices when it is not in the table or has no such peak."""
    if gpu not in GPU_PEAKS:
        raise ValueError(f"plan.gpu={gpu!r} is not in the peak table: choose one of {', '.join(GPU_PEAKS)} "
                         "or set plan.peak_tflops.")
    if precision not in GPU_PEAKS[gpu]:
        with_it = [g for g, p in GPU_PEAKS.items() if precision in p]
        raise ValueError(f"plan.gpu={gpu!r} has no {precision} tensor cores (model.vision.fp8=true): plan for one of "
                         f"{', '.join(with_it)}, or set model.vision.fp8=false.")
    return GPU_PEAKS[gpu][precision] / 1e12


def plan(vision: Any, teacher: Any = None, *, batch: int, gpus: int, mfu: float = PlanConfig.mfu,
         peak_tflops: float | None = None, samples: float = DEFAULT_SAMPLES, captions_per_sample: int = 1,
         recompute: bool = False, fused_attention: bool = True, distributed_optimizer: bool = False,
         embedding_bytes: float = 2, sidecar_fields: int | None = None, adapter: AdapterConfig | None = None,
         gpus_per_node: int | None = None, tp_field: str = "teacher.tensor_parallel",
         per_node_source: str = "") -> dict[str, Any]:
    """Estimates for training `vision` against `teacher` with global `batch` over `gpus` GPUs.

    `vision`: a ViTConfig or a dict-like section (see `vision_shape`); `teacher`: a TeacherShape, a
    dict-like section (see `teacher_shape`) or None; `adapter`: the run's AdapterConfig (default
    AdapterConfig(); not counted without a teacher, whose hidden size is its input). captions_per_sample:
    captions the online teacher embeds per sample per step; sidecar_fields: caption vectors per sample in
    the offline sidecars (default captions_per_sample). peak_tflops: None = `default_peak_tflops()`.
    The teacher's TP is checked against `gpus` and `gpus_per_node` by the run's own rule
    (`runtime.layout.check_tp`, LayoutError naming `tp_field`; `per_node_source` says where the per-node
    count came from). `train_flops_per_sample` is `runtime.flops.train_flops_per_sample`, the count a
    run's MFU divides by; `model_flops_per_sample` adds the online teacher's forward.
    Returns a flat dict of numbers (FLOPs, bytes, seconds)."""
    v = vision_shape(vision)
    t = teacher if isinstance(teacher, TeacherShape) or teacher is None else teacher_shape(teacher)
    if gpus < 1 or batch < 1:
        raise ValueError(f"plan needs gpus >= 1 and batch >= 1 (got gpus={gpus}, batch={batch}).")
    if batch % gpus:
        raise ValueError(f"batch={batch} is not divisible by gpus={gpus}: the global batch splits evenly over "
                         f"data-parallel ranks; use a multiple of {gpus}.")
    if not 0 < mfu <= 1:
        raise ValueError(f"mfu={mfu} must be in (0, 1].")
    if t is not None:
        check_tp(t.tensor_parallel, gpus, gpus_per_node, tp_field, per_node_source)
    peak_tflops = default_peak_tflops() if peak_tflops is None else peak_tflops
    adapter = (adapter or AdapterConfig()) if t is not None else None
    micro = batch // gpus
    fields = captions_per_sample if sidecar_fields is None else sidecar_fields
    r: dict[str, Any] = {"gpus": gpus, "global_batch": batch, "micro_batch": micro, "mfu": mfu,
                         "peak_tflops": peak_tflops, "samples": float(samples),
                         "teacher_mode": t.mode if t is not None else "none",
                         "captions_per_sample": captions_per_sample, "sidecar_fields": fields}

    # FLOPs per sample: the run's counts (runtime.flops), plus the online teacher's forward
    r["vision_params"] = v.num_params()
    r["adapter_params"] = adapter.num_params(t.hidden, v.embed_dim) if adapter is not None else 0
    r["vision_forward_flops"] = vision_forward_flops(v)
    r["vision_train_flops"] = 3 * r["vision_forward_flops"]
    r["adapter_forward_flops"] = adapter_forward_flops(adapter, t.hidden, v.embed_dim) if adapter is not None else 0.0
    r["train_flops_per_sample"] = (train_flops_per_sample(v, adapter, t.hidden) if adapter is not None
                                   else r["vision_train_flops"])
    teacher_fwd = 0.0
    if t is not None:
        r["teacher_params"] = llama_param_count(t)
        r["teacher_forward_flops_per_caption"] = llama_forward_flops(t)
        teacher_fwd = r["teacher_forward_flops_per_caption"] * captions_per_sample if t.mode == "online" else 0.0
    r["teacher_flops_per_sample"] = teacher_fwd
    r["model_flops_per_sample"] = r["train_flops_per_sample"] + teacher_fwd
    r["hardware_flops_per_sample"] = r["model_flops_per_sample"] + (r["vision_forward_flops"] if recompute else 0.0)

    # memory per GPU: the trainable tower and adapter (fp32 params, grads, AdamW m and v)
    p = r["vision_params"] + r["adapter_params"]
    r["mem_params"] = 4.0 * p
    r["mem_grads"] = 4.0 * p
    r["mem_optimizer"] = 8.0 * p / (gpus if distributed_optimizer else 1)
    r["mem_activations"] = vit_activation_bytes(v, micro, recompute, fused_attention)
    r["mem_activations_no_recompute"] = vit_activation_bytes(v, micro, False, fused_attention)
    r["mem_activations_recompute"] = vit_activation_bytes(v, micro, True, fused_attention)
    # contrastive logits: local rows x global columns, both directions, fp32
    r["mem_logits"] = 2 * 4.0 * micro * batch
    r["mem_teacher"] = 0.0
    if t is not None and t.mode == "online":
        tp = t.tensor_parallel
        weights = 2.0 * llama_param_count(t) / tp
        tokens = t.seq_len * micro * captions_per_sample * tp  # the TP group runs its gathered captions
        kv = t.kv_heads * t.head_dim
        working = 2.0 * tokens * (2 * t.hidden + (t.hidden + 2 * kv) / tp + 2 * t.ffn / tp)
        r["mem_teacher_weights"], r["mem_teacher_working"] = weights, working
        r["mem_teacher"] = weights + working
    r["mem_total"] = sum(r[k] for k in ("mem_params", "mem_grads", "mem_optimizer", "mem_activations",
                                        "mem_logits", "mem_teacher"))

    # throughput and time
    r["samples_per_s"] = gpus * peak_tflops * 1e12 * mfu / r["model_flops_per_sample"]
    r["step_time_s"] = batch / r["samples_per_s"]
    r["wall_time_s"] = float(samples) / r["samples_per_s"]
    r["gpu_hours"] = r["wall_time_s"] * gpus / 3600

    # offline embeddings (what extract writes; the run reads them in offline mode)
    if t is not None:
        r["offline_storage_bytes"] = offline_storage_bytes(samples, fields, t.hidden, embedding_bytes)
        extract_flops = float(samples) * fields * r["teacher_forward_flops_per_caption"]
        r["extract_wall_time_s"] = extract_flops / (gpus * peak_tflops * 1e12 * mfu)
    return r


def plan_extract(teacher: Any, *, gpus: int, samples: float, captions_per_sample: int = 1, mfu: float = PlanConfig.mfu,
                 peak_tflops: float | None = None, embedding_bytes: float = 2,
                 tp_field: str = "teacher.tensor_parallel") -> dict[str, Any]:
    """Offline extraction only (the `extract` verb): teacher cost, time on `gpus` GPUs, sidecar storage.
    The teacher's TP is checked against `gpus` by the run's rule (`runtime.layout.check_tp`)."""
    t = teacher if isinstance(teacher, TeacherShape) else teacher_shape(teacher)
    if t is None:
        raise ValueError("plan_extract needs a teacher section (teacher.preset, teacher.path or its shape).")
    if gpus < 1:
        raise ValueError(f"plan needs gpus >= 1 (got gpus={gpus}).")
    check_tp(t.tensor_parallel, gpus, None, tp_field)
    if not 0 < mfu <= 1:
        raise ValueError(f"mfu={mfu} must be in (0, 1].")
    peak_tflops = default_peak_tflops() if peak_tflops is None else peak_tflops
    per_caption = llama_forward_flops(t)
    captions_per_s = gpus * peak_tflops * 1e12 * mfu / per_caption
    return {"gpus": gpus, "samples": float(samples), "captions_per_sample": captions_per_sample, "mfu": mfu,
            "peak_tflops": peak_tflops, "teacher_params": llama_param_count(t),
            "teacher_forward_flops_per_caption": per_caption,
            "mem_teacher_weights": 2.0 * llama_param_count(t) / t.tensor_parallel,
            "captions_per_s": captions_per_s,
            "extract_wall_time_s": float(samples) * captions_per_sample / captions_per_s,
            "offline_storage_bytes": offline_storage_bytes(samples, captions_per_sample, t.hidden, embedding_bytes)}


def _recipe_schema(config_name: str | None, config_dir: Path | None, overrides: list[str]) -> type:
    """The typed config of the recipe a YAML belongs to: ExtractConfig when it has a top-level teacher or
    data section, else the stage-2 TrainCLIPConfig."""
    from omegaconf import OmegaConf

    from ..config.loader import CONFIG_DIR, ConfigError

    keys = {o.split("=", 1)[0].split(".", 1)[0] for o in overrides}
    if config_name:
        d = Path(config_dir) if config_dir else CONFIG_DIR
        f = d / (config_name if config_name.endswith(".yaml") else f"{config_name}.yaml")
        if f.is_file():
            keys |= set(OmegaConf.load(f).keys())
    if "model" not in keys and keys & {"teacher", "data", "projection"}:
        from ..recipes.extract import ExtractConfig

        return ExtractConfig
    if keys & {"model", "trainer"} or not keys - {"plan"}:
        from ..recipes.train_clip import TrainCLIPConfig

        return TrainCLIPConfig
    raise ConfigError(f"cannot tell the recipe of {config_name!r}: plan reads stage-2 configs (model.vision, "
                      "model.teacher: pretrain_*, finetune_*) and extract configs (teacher, data: extract_*).")


def _preset_aliases(overrides: list[str]) -> list[str]:
    """`teacher.preset=X` / `model.teacher.preset=X` (the names users reach for) -> plan.teacher_preset=X."""
    return [f"plan.teacher_preset={o.split('=', 1)[1]}" if o.split("=", 1)[0] in ("teacher.preset", "model.teacher.preset")
            else o for o in overrides]


def _caption_tokens(teacher) -> int:
    """Tokens per caption the teacher embeds: the config's max_length when set, else the contract
    recorded with the teacher at teacher.path (when it is on this machine), else the contract
    default `convert import-llm` writes (`formats.contract.TeacherContract.max_length`)."""
    from ..formats.contract import TeacherContract, read_contract

    if teacher.max_length:
        return int(teacher.max_length)
    recorded = read_contract(teacher.path) if teacher.path and Path(teacher.path).exists() else None
    return (recorded or TeacherContract()).max_length


def shape_from_teacher_config(teacher, preset: str, mode: str, where: str) -> TeacherShape:
    """TeacherShape of a typed TeacherConfig: the shape from `preset`, else from teacher.path (see
    `checkpoint_shape`); tensor parallelism and the caption length (max_length) from the config."""
    if preset:
        base: dict[str, Any] | None = preset_shape(preset)
    else:
        base = checkpoint_shape(teacher.path)
    if base is None:
        raise ValueError(f"{where}.path={teacher.path!r} is neither a Megatron teacher dir (hf/config.json) nor a "
                         f"HF model dir (config.json) on this machine: name its shape with plan.teacher_preset=NAME "
                         f"({', '.join(sorted(TEACHER_PRESETS))}).")
    return teacher_shape({**base, "preset": None, "path": None, "seq_len": _caption_tokens(teacher),
                          "tensor_parallel": teacher.tensor_parallel, "mode": mode})


def plan_from_config(cfg) -> dict[str, Any]:
    """The plan of a typed recipe config (TrainCLIPConfig or ExtractConfig, overrides merged). The
    teacher's TP is checked as the run checks it where it starts (`recipes.train_clip.check_teacher_tp`:
    the planned GPUs, trainer.devices per node; extract: the GPUs, as `init_parallel` checks the world)."""
    knobs = cfg.plan
    fp8 = hasattr(cfg, "model") and bool(cfg.model.vision.fp8)  # the run's MFU then divides by the FP8 peak
    peak = knobs.peak_tflops or default_peak_tflops(knobs.gpu, "fp8" if fp8 else "bf16")
    if hasattr(cfg, "model"):  # stage 2
        from ..recipes.train_clip import check_teacher_tp

        m, trainer = cfg.model, cfg.trainer
        if m.mode == "finetune":  # fields left to the checkpoint (0 / 'checkpoint') take its values
            from ..formats.vision_checkpoint import adopt_checkpoint_architecture

            m.vision = adopt_checkpoint_architecture(m.vision, m.init_from)
        gpus = knobs.gpus or trainer.world_size
        check_teacher_tp(cfg, gpus)
        t = shape_from_teacher_config(m.teacher, knobs.teacher_preset, m.teacher_mode, "model.teacher")
        batch = knobs.batch or m.global_batch_size or m.train_ds.batch_size * gpus
        fields = [f for f, w in m.train_ds.caption_fields.items() if w > 0]
        return plan(m.vision, t, batch=batch, gpus=gpus, mfu=knobs.mfu, peak_tflops=peak,
                    samples=knobs.samples or DEFAULT_SAMPLES, captions_per_sample=1, sidecar_fields=len(fields),
                    recompute=bool(m.vision.recompute), fused_attention=knobs.fused_attention,
                    distributed_optimizer=knobs.distributed_optimizer, embedding_bytes=knobs.embedding_bytes or 2,
                    adapter=m.adapter, tp_field=TP_FIELD)
    t = shape_from_teacher_config(cfg.teacher, knobs.teacher_preset, "offline", "teacher")
    emb = knobs.embedding_bytes or (1 if cfg.data.storage_dtype == "int8" else 2)
    return plan_extract(t, gpus=knobs.gpus or cfg.projection.gpus, samples=knobs.samples or cfg.projection.samples,
                        captions_per_sample=len(cfg.data.fields), mfu=knobs.mfu, peak_tflops=peak,
                        embedding_bytes=emb)


def main(argv: list[str] | None = None) -> int:
    from ..config import ConfigError, load_config, parse_command_line, verb_parser

    p = verb_parser(
        "plan", description=__doc__.splitlines()[0],
        usage="llm2clip-nemo plan [--config-name NAME] [--config-path DIR] [key=value ...] [--json]",
        epilog="Reads the recipe's typed config (pretrain_*/finetune_*: TrainCLIPConfig; extract_*: ExtractConfig) "
               "with its overrides; the teacher's shape from plan.teacher_preset (or teacher.preset=NAME), a Megatron "
               "teacher dir or a HF dir at teacher.path. Planner knobs: plan.gpus, plan.batch, plan.samples, plan.mfu "
               f"({PlanConfig.mfu}), plan.gpu ({PlanConfig.gpu}: its dense bf16 peak from the table a run's MFU uses), "
               "plan.peak_tflops (0: plan.gpu's), "
               "plan.fused_attention, plan.distributed_optimizer, "
               f"plan.embedding_bytes. Presets: {', '.join(sorted(TEACHER_PRESETS))}.")
    p.add_argument("--json", action="store_true", help="print the numbers as JSON instead of a table")
    cl = parse_command_line("plan", list(argv or []), flags=p)
    name, path, args = cl.config_name, cl.config_path, cl.flags
    try:
        overrides = _preset_aliases(cl.overrides)
        schema = _recipe_schema(name, path, overrides)
        # names and types are checked; validate() is not run: the recipe's paths exist on the cluster only
        cfg = load_config(schema, name, overrides, path, validate=False)
        cfg.plan.validate()
        r = plan_from_config(cfg)
    except (ConfigError, ValueError) as e:
        print(f"llm2clip-nemo plan: {e}", file=sys.stderr)
        return 2
    print(json.dumps(r, indent=2) if args.json else format_table(r))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
