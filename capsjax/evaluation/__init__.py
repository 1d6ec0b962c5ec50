"""capsjax.evaluation: evaluation metrics (NumPy; no I/O).

- :mod:`capsjax.evaluation.retrieval`: zero-shot retrieval (R@1/5/10,
  median and mean rank), cosine similarities, fused video+audio targets.
- :mod:`capsjax.evaluation.clustering`: k-means + Hungarian matching, the
  zero-shot classification protocol of Swetha et al.
- :mod:`capsjax.evaluation.classification`: top-1 accuracy and the
  DiverseMultiMNIST set accuracy (JAX).
"""

from capsjax.evaluation.classification import (
    accuracy,
    predicted_set,
    set_accuracy,
    set_correct,
    top1_correct,
)
from capsjax.evaluation.clustering import (
    KMeansResult,
    contingency_table,
    hungarian_accuracy,
    kmeans,
    zero_shot_cluster_accuracy,
)
from capsjax.evaluation.retrieval import (
    cosine_similarity,
    fuse_embeddings,
    l2_normalize,
    retrieval_metrics,
    retrieval_ranks,
    text_video_retrieval,
)

__all__ = [
    "KMeansResult",
    "accuracy",
    "contingency_table",
    "cosine_similarity",
    "fuse_embeddings",
    "hungarian_accuracy",
    "kmeans",
    "l2_normalize",
    "predicted_set",
    "retrieval_metrics",
    "retrieval_ranks",
    "set_accuracy",
    "set_correct",
    "text_video_retrieval",
    "top1_correct",
    "zero_shot_cluster_accuracy",
]
