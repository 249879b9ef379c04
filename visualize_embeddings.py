"""Look at a run's embeddings: python visualize_embeddings.py --model_dir RUN [--split test] [--max_points N]

Embeds a split with RUN/checkpoints/best.keras and writes, under RUN (or --out OUT):
  projector/      TensorBoard projector files: `tensorboard --logdir RUN`, then the Projector tab
                  (T-SNE, PCA or UMAP, coloured by the metadata's "class" column, with thumbnails)
  tsne.png        a static t-SNE of the same points, coloured by class
  retrieval.png   random queries and their nearest reference images, framed green/red by relevance
"""

import argparse
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from model.cli import configure_logging, loading  # noqa: E402

with loading():  # Ctrl-C while the modules load: exit 130, no traceback
    from model.app.visualization import visualize
    from model.viz.projector import MAX_POINTS


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model_dir", required=True, help="a trained run folder")
    parser.add_argument("--split", default=None, help='split to embed (default: "test", else "query")')
    parser.add_argument("--max_points", type=int, default=MAX_POINTS,
                        help=f"points drawn evenly across classes (default and maximum: {MAX_POINTS})")
    parser.add_argument("--num_queries", type=int, default=6, help="rows of retrieval.png")
    parser.add_argument("--top_k", type=int, default=5, help="neighbours per query in retrieval.png")
    parser.add_argument("--seed", type=int, default=0, help="seed of the sampling, the queries and t-SNE")
    parser.add_argument("--out", default=None, help="folder for the outputs (default: the run folder)")
    args = parser.parse_args(argv)
    configure_logging()
    try:
        visualize(args.model_dir, split=args.split, max_points=args.max_points, num_queries=args.num_queries,
                  top_k=args.top_k, seed=args.seed, out_dir=args.out)
    except (ValueError, FileNotFoundError, NotADirectoryError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except OSError as error:
        print(f"error: cannot write the pictures ({error}); use --out FOLDER to write them elsewhere",
              file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
