"""Evaluation: the ranking engine (ranking.py), the metrics on arrays (metrics.py), k-reciprocal re-ranking
(rerank.py), and the protocols that say how each kind of dataset is measured (protocols.py)."""

from model.evaluation.metrics import recall_at_n, reid_metrics, reid_metrics_from_distances, retrieval_metrics
from model.evaluation.protocols import EVAL_SIZE, PROTOCOLS, Protocol
from model.evaluation.rerank import k_reciprocal_rerank, k_reciprocal_rerank_embeddings

# The params.json keys of evaluation (`model.params` reads these).
OPTIONS = (EVAL_SIZE,)

__all__ = ["OPTIONS", "PROTOCOLS", "Protocol", "k_reciprocal_rerank", "k_reciprocal_rerank_embeddings", "recall_at_n",
           "reid_metrics", "reid_metrics_from_distances", "retrieval_metrics"]
