"""The application edge: params.json -> the library's components, and the bodies of the command lines.

  adapter.py        the one adapter from `model.params.Params` to the components' keyword arguments
  training.py       train an experiment into its run folder (train.py)
  runs.py           read a run: its parameters, data and network (evaluation, export, visualization)
  evaluation.py     evaluate a run; retrieve over image folders with it (evaluate.py)
  export.py         export a run as a bundle (export.py)
  visualization.py  projector files and pictures of a run (visualize_embeddings.py)
"""
