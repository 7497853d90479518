"""Evaluation as a library: data -> eval set, model adapters (encoders), tasks, reports.

- eval set: `evalset.EvalSet` (images, captions, text_to_image, labels, what was left out), read by
  `data.load_eval_data` (shards or a manifest), `manifest.load_manifest` / `from_samples`;
  the public benchmarks by `benchmarks.load_benchmark` (`bench_set.Benchmark`);
- encoders: `encoders.encoders_for(model, groups)`, the one module that knows model classes;
  `features.extract_features` spreads encoding over a process group;
- tasks: `tasks.evaluate(model, data)` (retrieval, long, cra, zeroshot), `bench_run.run_benchmarks`
  and `score_benchmark`; the metric functions themselves are `llm2clip_nemo.metrics`;
- reports: `results.write_comparison_report`, `bench_run.write_benchmark_report`, `report` (json,
  markdown, PNG plots).
`recipes/evaluate.py` is the command line over it.
"""
from ..metrics import (
    RetrievalRanks,
    build_class_embeddings,
    caption_retrieval_accuracy,
    caption_retrieval_all_pairs,
    recall_curve,
    retrieval_metrics,
    retrieval_ranks,
    top_retrievals,
    zeroshot_classification,
)
from .bench_run import score_benchmark, table_row, write_benchmark_report
from .benchmarks import BENCHMARKS, Benchmark, BenchmarkError, find_benchmarks, load_benchmark
from .features import extract_features, shard_indices
from .manifest import EvalSet, ManifestError, from_samples, load_manifest
from .templates import IMAGENET_TEMPLATES, SHORT_TEMPLATES, get_templates

# Loaded when a name is first used: matplotlib only for reports and plots (CRA during training needs
# none), the shard reader and the model classes only for `evaluate`.
_LAZY = {
    "report": ("plot_image_to_text_grid", "plot_lines", "plot_recall_curves", "plot_text_to_image_grid",
               "write_report"),
    "suite": ("Examples", "evaluate_features", "evaluate_zeroshot", "plot_examples", "retrieval_examples",
              "summary_row"),
    "data": ("EvalData", "EvalDataError", "load_eval_data", "load_shard_data"),
    "encoders": ("Encoders", "encoders_for", "load_any_model", "model_scorers", "spread_groups"),
    "tasks": ("TASKS", "cra_groups", "evaluate", "resolve_tasks"),
    "results": ("plot_retrieval_grids", "report_sections", "write_comparison_report"),
    "bench_run": ("run_benchmarks",),
    "benchmarks": ("resolve_names",),
}


def __getattr__(name):
    import importlib

    for module, names in _LAZY.items():
        if name in names:
            return getattr(importlib.import_module(f".{module}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "BENCHMARKS",
    "Benchmark",
    "BenchmarkError",
    "find_benchmarks",
    "load_benchmark",
    "score_benchmark",
    "table_row",
    "write_benchmark_report",
    "IMAGENET_TEMPLATES",
    "SHORT_TEMPLATES",
    "EvalSet",
    "ManifestError",
    "RetrievalRanks",
    "build_class_embeddings",
    "caption_retrieval_accuracy",
    "caption_retrieval_all_pairs",
    "extract_features",
    "from_samples",
    "get_templates",
    "load_manifest",
    "recall_curve",
    "retrieval_metrics",
    "retrieval_ranks",
    "shard_indices",
    "top_retrievals",
    "zeroshot_classification",
    *(n for names in _LAZY.values() for n in names),
]
