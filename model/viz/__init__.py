"""Pictures of embeddings: TensorBoard projector files (projector.py), t-SNE and retrieval plots (plots.py), the
points they show (points.py)."""
