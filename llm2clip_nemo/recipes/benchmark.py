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

from ..eval.benchmarks import BenchmarkError, load_benchmark, resolve_names


def main_benchmark(args) -> int:
    """The `evaluate --benchmark` path of `recipes.evaluate.main` (argparse namespace in)."""
    from ..config import ConfigError
    from ..eval.bench_run import run_benchmarks, table_row, write_benchmark_report
    from ..eval.encoders import load_any_model
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
                                 log=print if rank0 else (lambda *a: None), groups=groups)
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
