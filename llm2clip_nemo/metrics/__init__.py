"""Pure evaluation metrics over feature tensors: retrieval recall@k, zero-shot classification and
caption retrieval accuracy (CRA, as the LLM2CLIP paper measures it, and an all-pairs variant).

A layer of its own beside `losses` (torch only, no model, no I/O): the training loops' validation
(`models/`) and the evaluation library (`eval/`) both import it.

Conventions shared by every function here:
- Inputs are feature tensors (any float dtype, any device). They are L2-normalised here, in
  `compute_dtype` (float64 by default), so callers may pass raw model outputs; the score of a pair
  is the cosine similarity.
- Results are percentages in [0, 100], as LLM2CLIP and CLIP papers report them.
- Ties are broken pessimistically and deterministically: a wrong candidate whose score is within
  `tie_eps` of (or above) the right one's counts as ranked above it. So a model that maps
  everything to one vector scores 0, never "lucky", and the result does not depend on the order of
  the candidates or on BLAS summation order (`tie_eps` absorbs the rounding of the matmul).
- Work is blockwise (`block_size` rows x `block_size` columns of scores at a time), so 100k x 100k
  retrieval never materialises the full similarity matrix.
"""
from .captions import caption_retrieval_accuracy, caption_retrieval_all_pairs
from .classification import (
    build_class_embeddings,
    class_embeddings_from_templates,
    zeroshot_classification,
    zeroshot_ranks,
)
from .retrieval import (
    DEFAULT_BLOCK,
    DEFAULT_TIE_EPS,
    RetrievalRanks,
    ScoreBlock,
    metrics_from_ranks,
    normalize,
    recall_at_k,
    recall_curve,
    retrieval_metrics,
    retrieval_ranks,
    retrieval_ranks_from_similarity,
    top_retrievals,
)

__all__ = [
    "DEFAULT_BLOCK",
    "DEFAULT_TIE_EPS",
    "RetrievalRanks",
    "ScoreBlock",
    "build_class_embeddings",
    "caption_retrieval_accuracy",
    "caption_retrieval_all_pairs",
    "class_embeddings_from_templates",
    "metrics_from_ranks",
    "normalize",
    "recall_at_k",
    "recall_curve",
    "retrieval_metrics",
    "retrieval_ranks",
    "retrieval_ranks_from_similarity",
    "top_retrievals",
    "zeroshot_classification",
    "zeroshot_ranks",
]
