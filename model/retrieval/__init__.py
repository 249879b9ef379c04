"""Retrieval: embedding images (embed.py), exact and approximate search (index.py), verification thresholds
(calibration.py), folder-to-folder retrieval (folders.py), and the exported bundle with its client
(bundle.py)."""

from model.retrieval.bundle import Retriever, write_bundle
from model.retrieval.embed import embed, embed_folder, embed_split
from model.retrieval.index import ReferenceIndex, knn

__all__ = ["ReferenceIndex", "Retriever", "embed", "embed_folder", "embed_split", "knn", "write_bundle"]
