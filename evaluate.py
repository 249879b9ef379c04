"""Evaluate a trained run, or retrieve database images for query images with it.

Metrics (the protocol follows the dataset: retrieval vs train and leave-one-out for labelled data,
mAP/CMC for re-ID, Recall@N for places); prints a table and writes MODEL_DIR/metrics_<split>.json
(or OUT/metrics_<split>.json):
    python evaluate.py --model_dir RUN [--split test|validation] [--checkpoint best|latest|untrained] [--flip]
                       [--rerank] [--out OUT]
Off-the-shelf: on a run never trained (a folder with its params.json only), or with --checkpoint untrained,
the network training starts from is measured (seeded, after its before-fit steps such as NetVLAD's
clustering), written to metrics_<split>_untrained.json.

Query-to-database retrieval over two image folders (searched recursively), no labels needed:
    python evaluate.py --model_dir RUN --query_dir Q --db_dir D --out OUT [--top_k 10]
writes OUT/retrieved.csv (query,rank,database,distance), the embeddings with their paths and
data_report.csv (files left out); OUT must be new, empty or an earlier output, outside Q and D.
"""

import argparse
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from model.cli import configure_logging, loading  # noqa: E402

with loading():  # Ctrl-C while the modules load: exit 130, no traceback
    from model.app import evaluation
    from model.app.runs import UNTRAINED
    from model.run import CHECKPOINTS

RETRIEVAL_ARGUMENTS = ("query_dir", "db_dir")


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model_dir", required=True, help="the trained run folder")
    parser.add_argument("--checkpoint", default=None, choices=(*CHECKPOINTS, UNTRAINED),
                        help="which network: best (the default for a trained run), latest, or untrained (the "
                             "default for a run never trained: the initialised network, off-the-shelf)")
    parser.add_argument("--flip", action="store_true",
                        help="flip test-time augmentation: average each image's embedding with its mirror's")
    parser.add_argument("--rerank", action="store_true",
                        help="re-ID: also mAP and CMC after k-reciprocal re-ranking (Zhong et al. 2017)")
    parser.add_argument("--split", default=None,
                        help=f"metrics mode: the split to evaluate, one of {evaluation.SPLITS} (default test)")
    parser.add_argument("--query_dir", help="retrieval mode: folder of query images")
    parser.add_argument("--db_dir", help="retrieval mode: folder of database images")
    parser.add_argument("--out", help="retrieval mode: output folder (new, empty or an earlier output); metrics "
                                      "mode: the folder for metrics_<split>.json (default: the run folder)")
    parser.add_argument("--top_k", type=int, default=10, help="retrieval mode: database images per query")
    args = parser.parse_args(argv)
    given = [name for name in RETRIEVAL_ARGUMENTS if getattr(args, name) is not None]
    missing = [f"--{name}" for name in (*RETRIEVAL_ARGUMENTS, "out") if given and getattr(args, name) is None]
    if missing:
        parser.error(f"retrieval mode needs --query_dir, --db_dir and --out; missing {' '.join(missing)}")
    if given and args.split is not None:
        parser.error("--split is for the metrics mode; retrieval mode embeds --query_dir and --db_dir")
    return args


def main(argv=None):
    args = parse_args(argv)
    configure_logging()
    try:
        if args.query_dir is not None:
            _, indices, queries, database = evaluation.retrieve_folders(
                args.model_dir, args.query_dir, args.db_dir, args.out, args.top_k, args.checkpoint or "best", args.flip)
            print(f"{len(queries)} queries × {indices.shape[1]} nearest of {len(database)} database images: "
                  f"{os.path.join(args.out, 'retrieved.csv')}")
        else:
            split = args.split or "test"
            results = evaluation.evaluate_run(args.model_dir, split, args.checkpoint, args.flip,
                                                rerank=args.rerank)
            if results["checkpoint"] == UNTRAINED:
                print(f"checkpoint: untrained ({args.model_dir}'s network as training starts it: seeded, after its "
                      "before-fit steps; off-the-shelf)")
            print(evaluation.metrics_table(results))  # before saving: a folder it cannot write loses nothing
            out = args.out or args.model_dir
            os.makedirs(out, exist_ok=True)
            suffix = "_untrained" if results["checkpoint"] == UNTRAINED else ""
            path = os.path.join(out, f"metrics_{split}{suffix}.json")
            try:
                evaluation.save_json(results, path)
            except OSError as error:
                print(f"error: cannot write {path} ({error}); the metrics are above. Use --out FOLDER to write "
                      "them elsewhere.", file=sys.stderr)
                return 2
            print(f"written to {path}")
    except (ValueError, FileNotFoundError, NotADirectoryError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
