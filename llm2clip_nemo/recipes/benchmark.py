"""`llm2clip-nemo evaluate --benchmark NAME --root DIR --model PATH [--baseline CLIP_DIR]`: the public
benchmarks (`eval.benchmarks`) scored by `eval.bench_run`, one results table in the paper's layout.

NAME is one of `eval.benchmarks.BENCHMARKS`, a comma list, or `all` (every benchmark whose files
are under DIR; the missing ones are listed). Models: anything `evaluate` takes (run dir, .nemo,
.ckpt, HF export) and a stock HF `CLIPModel` directory; `--baseline` adds a second model (e.g.
the CLIP whose vision tower was fine-tuned) as a second row of the same table.
"""
from __future__ import annotations

import sys
from pathlib import Path

import torch

from ..eval.benchmarks import BENCHMARKS, BenchmarkError, find_benchmarks, load_benchmark


def load_any_model(path: str, tensor_parallel: int = 1, teacher_path: str | None = None, groups=None):
    """A stock HF CLIPModel directory as `StockCLIP`, anything else by `models.loading.load_llm2clip`."""
    from ..models.stock_clip import StockCLIP, is_stock_clip

    if is_stock_clip(path):
        return StockCLIP.from_pretrained(path, "cuda" if torch.cuda.is_available() else "cpu")
    from ..models.loading import load_llm2clip

    return load_llm2clip(path, tensor_parallel=tensor_parallel, teacher_path=teacher_path, groups=groups)


def resolve_names(spec: str, root: str | Path) -> tuple[list[str], dict[str, list[Path]]]:
    """(benchmarks to run, {benchmark: missing files}) for `all` or a comma list of names."""
    if spec == "all":
        found, missing = find_benchmarks(root)
        if not found:
            raise BenchmarkError(f"{root}: no benchmark files found; expected e.g. "
                                 f"{Path(root) / 'coco' / 'dataset_coco.json'} (see the README's benchmark layout).")
        return found, missing
    names = [n.strip() for n in spec.split(",") if n.strip()]
    unknown = [n for n in names if n not in BENCHMARKS]
    if unknown or not names:
        raise BenchmarkError(f"unknown benchmark {unknown[0] if unknown else spec!r}: choose from "
                             f"{', '.join(BENCHMARKS)}, or all.")
    return names, {}


def model_scorers(model, batch_size: int = 64):
    """(image_features(paths), text_features(texts), llm_features or None) for any model `evaluate` takes;
    data-parallel under torchrun like `evaluate` (every rank calls with the same lists)."""
    from ..eval import features as F_
    from ..hf_model import preprocess_images
    from ..models.stock_clip import StockCLIP
    from .evaluate import encoders_for

    enc = encoders_for(model)

    def image_features(paths):
        def batch(idx):
            pix = preprocess_images([paths[i] for i in idx], enc.image_size, enc.mean, enc.std)
            return enc.image(pix).float().cpu()

        return F_.extract_features(list(range(len(paths))), batch, batch_size, group=enc.image_group).cpu()

    def llm_features(texts):
        return F_.extract_features(list(texts), lambda b: enc.llm(b).float().cpu(), batch_size,
                                   group=enc.text_group).cpu()

    def text_features(texts):
        raw = llm_features(texts)
        chunk = 16 * batch_size
        return torch.cat([enc.adapt(raw[i:i + chunk]).float().cpu() for i in range(0, len(raw), chunk)])

    return image_features, text_features, (None if isinstance(model, StockCLIP) else llm_features), enc.describe


def run_benchmarks(models: dict, benches: list, *, batch_size: int = 64, log=print) -> dict[str, dict[str, dict]]:
    """{model name: {benchmark: score}} for loaded `eval.benchmarks.Benchmark`s and {name: model}."""
    from ..eval.bench_run import score_benchmark

    scorers = {m: model_scorers(model, batch_size) for m, model in models.items()}
    results: dict[str, dict[str, dict]] = {m: {} for m in models}
    for bench in benches:
        log(bench.summary())
        for m, (img, txt, llm, describe) in scorers.items():
            results[m][bench.name] = {**score_benchmark(bench, img, txt, llm_features=llm), "model": describe}
    return results


def main_benchmark(args) -> int:
    """The `evaluate --benchmark` path of `recipes.evaluate.main` (argparse namespace in)."""
    from ..config import ConfigError
    from ..eval.bench_run import table_row, write_benchmark_report
    from ..eval.manifest import ManifestError
    from ..eval.report import markdown_table
    from ..models.loading import UnknownLayoutError
    from ..runtime import init_parallel

    try:
        if not args.root:
            raise BenchmarkError("--benchmark needs --root DIR, the folder holding the benchmark files.")
        if args.data:
            raise BenchmarkError("--data and --benchmark are alternatives: give one (a benchmark reads its files "
                                 "from --root).")
        names, missing = resolve_names(args.benchmark, args.root)
        benches = [load_benchmark(n, args.root, strict=args.strict) for n in names]  # before any model loads
        groups = init_parallel(args.tensor_parallel, field="--tensor-parallel")
        models = {args.name or Path(args.model).name: load_any_model(args.model, args.tensor_parallel,
                                                                       args.teacher_path, groups)}
        if args.baseline:
            name = Path(args.baseline).name
            name = name if name not in models else f"{name} (baseline)"
            models[name] = load_any_model(args.baseline, args.tensor_parallel, None, groups)
        rank0 = groups.rank == 0
        results = run_benchmarks(models, benches, batch_size=args.batch_size,
                                 log=print if rank0 else (lambda *a: None))
    except (BenchmarkError, ManifestError, UnknownLayoutError, ConfigError, ValueError, FileNotFoundError) as e:
        print(f"llm2clip-nemo evaluate: error: {e}", file=sys.stderr)
        return 2
    if rank0:
        meta = {"root": str(args.root), "benchmarks": ", ".join(names)}
        if missing:
            meta["missing"] = "; ".join(f"{n} ({', '.join(str(p) for p in f)})" for n, f in missing.items())
        paths = write_benchmark_report(results, args.out, meta=meta, plot=not args.no_plots)
        print("\n" + markdown_table({m: table_row(r) for m, r in results.items()}))
        for n, files in missing.items():
            print(f"missing: {n} (no {', '.join(str(p) for p in files)})")
        print(f"\nreport: {paths['md']}")
    return 0
