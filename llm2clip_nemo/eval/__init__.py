"""Evaluation: retrieval recall@k, zero-shot classification, caption retrieval accuracy (CRA),
eval data from manifests or samples, data-parallel feature extraction, reports and plots.

Model-agnostic: functions take feature tensors or encode callables, never a model class.
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

# matplotlib loads only when a report or suite name is first used (CRA during training needs none).
_LAZY = {
    "report": ("plot_image_to_text_grid", "plot_lines", "plot_recall_curves", "plot_text_to_image_grid",
               "write_report"),
    "suite": ("Examples", "evaluate_features", "evaluate_zeroshot", "plot_examples", "retrieval_examples",
              "summary_row"),
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
    "Examples",
    "ManifestError",
    "RetrievalRanks",
    "build_class_embeddings",
    "caption_retrieval_accuracy",
    "caption_retrieval_all_pairs",
    "evaluate_features",
    "evaluate_zeroshot",
    "extract_features",
    "from_samples",
    "get_templates",
    "load_manifest",
    "plot_examples",
    "plot_image_to_text_grid",
    "plot_lines",
    "plot_recall_curves",
    "plot_text_to_image_grid",
    "recall_curve",
    "retrieval_examples",
    "retrieval_metrics",
    "retrieval_ranks",
    "shard_indices",
    "summary_row",
    "top_retrievals",
    "write_report",
    "zeroshot_classification",
]
