"""Export a trained run as a bundle a service can load without this repository.

    python export.py --model_dir RUN [--checkpoint best|latest] [--out RUN/export] [--index flat|ivf|hnsw]
                     [--nlist N] [--nprobe N] [--M N] [--efConstruction N] [--efSearch N] [--target_precision 0.99]

writes OUT/saved_model (TensorFlow SavedModel: uint8 images of any size in, embeddings out),
OUT/index (faiss index of the run's reference set with labels and paths), OUT/threshold.json (the
verification thresholds calibrated on the validation split) and OUT/manifest.json. The bundle is
built in a temporary folder and renamed into place; a rerun replaces it completely. --out must be new,
empty, or an earlier bundle (its manifest.json says so); anything else is refused.
Exit status: 0 done, 2 bad input or a folder it cannot write (`error: ...`).
"""

import argparse
import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from model.cli import configure_logging, loading  # noqa: E402

with loading():  # Ctrl-C while the modules load: exit 130, no traceback
    from model.app.export import export_bundle
    from model.retrieval.index import DEFAULT_PARAMS, KINDS
    from model.run import CHECKPOINTS


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model_dir", required=True, help="the trained run folder")
    parser.add_argument("--checkpoint", default="best", choices=CHECKPOINTS, help="which network")
    parser.add_argument("--out", help="the bundle folder (default MODEL_DIR/export)")
    parser.add_argument("--index", default="flat", choices=KINDS, help="exact (flat) or approximate search")
    for name in sorted({name for params in DEFAULT_PARAMS.values() for name in params}):
        kind = next(kind for kind, params in DEFAULT_PARAMS.items() if name in params)
        parser.add_argument(f"--{name}", type=int, help=f"--index {kind}: {name} (default "
                                                         f"{DEFAULT_PARAMS[kind][name] or 'from the set size'})")
    parser.add_argument("--target_precision", type=float, default=0.99, help="precision of the calibrated threshold")
    args = parser.parse_args(argv)
    given = {name for params in DEFAULT_PARAMS.values() for name in params if getattr(args, name) is not None}
    wrong = sorted(given - set(DEFAULT_PARAMS[args.index]))
    if wrong:
        parser.error(f"{', '.join('--' + name for name in wrong)} do not apply to --index {args.index}")
    args.index_params = {name: getattr(args, name) for name in given}
    return args


def main(argv=None):
    args = parse_args(argv)
    configure_logging()
    try:
        out_dir, manifest = export_bundle(args.model_dir, args.out, args.checkpoint, args.index, args.index_params,
                                          args.target_precision)
    except (ValueError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except OSError as error:  # a run folder (or --out) it cannot write, a full disk: nothing half-written is left
        where = args.out or os.path.join(args.model_dir, "export")
        hint = "" if args.out else "; give --out FOLDER to write the bundle elsewhere"
        print(f"error: cannot write the bundle {where} ({error.strerror or error}"
              f"{': ' + error.filename if error.filename else ''}){hint}", file=sys.stderr)
        return 2
    print(f"bundle written to {out_dir}: {manifest['index']['count']} references ({manifest['reference_split']}), "
          f"{manifest['index']['kind']} index, embeddings of dimension {manifest['embedding_dimension']}")
    with open(os.path.join(out_dir, "threshold.json"), encoding="utf-8") as handle:
        threshold = json.load(handle)
    if not threshold["available"]:
        print(f"no verification threshold: {threshold['reason']}")
    for name, what in (("at_target", f"precision >= {args.target_precision}"), ("best_f1", "best F1")):
        point = threshold.get(name) if threshold["available"] else None
        if point is not None and point["threshold"] is not None:
            print(f"threshold at {what}: {point['threshold']:.4g} (precision {point['precision']:.3f}, recall "
                  f"{point['recall']:.3f}, F1 {point['f1']:.3f} on validation pairs)")
        elif point is not None:
            print(f"threshold at {what}: none, {point['reason']}")
    print(f"next: python search.py --bundle {out_dir} --images QUERY_FOLDER")
    return 0


if __name__ == "__main__":
    sys.exit(main())
