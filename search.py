"""Search the references of an exported bundle (export.py) for query images or embeddings.

    python search.py --bundle DIR (--images FOLDER_OR_FILES ... | --embeddings X.npy) [--top_k 10] [--out results.csv]

prints the top_k references of each query (rank, label, distance, path) and writes them to --out as CSV
(query,rank,label,index,path,distance: index = row of the reference in the bundle's index, path empty for
in-memory datasets, euclidean distance, rank 1 nearest), written to a temporary name and renamed.
--out is checked before the search: an existing file is replaced only when it is an earlier results file
(its first line is the header above); a folder, a path in a missing folder, or a path among the inputs
(the query images, their folder, the embeddings file, the bundle) is refused.
A folder is searched recursively for images; image files that cannot be decoded (in the folder or among the
files given) are reported and left out. --embeddings takes embeddings [Q, E] of the bundle's model (a .npy file).
Exit status: 0 done, 2 bad input (`error: ...`).
"""

import argparse
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from model.cli import configure_logging, loading  # noqa: E402

with loading():  # Ctrl-C while the modules load: exit 130, no traceback
    from model.atomic import write_csv
    from model.checks import load_array
    from model.retrieval.bundle import Retriever
    from model.retrieval.outputs import check_output_file

HEADER = ["query", "rank", "label", "index", "path", "distance"]


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bundle", required=True, help="the bundle folder written by export.py")
    queries = parser.add_mutually_exclusive_group(required=True)
    queries.add_argument("--images", nargs="+", help="a folder of query images, or image files")
    queries.add_argument("--embeddings", help="a .npy file of query embeddings [Q, E]")
    parser.add_argument("--top_k", type=int, default=10, help="references per query")
    parser.add_argument("--out", default="search_results.csv", help="the CSV file written")
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    configure_logging()
    try:
        check_output_file(args.out, ",".join(HEADER), args.bundle, args.embeddings, *(args.images or ()),
                          what="search results file")
        retriever = Retriever.load(args.bundle)
        if args.embeddings is not None:
            embeddings = load_array(args.embeddings, f"query embeddings [Q, {retriever.index.dimension}]")
            result = retriever.search_embeddings(embeddings, args.top_k)
            names = [str(i) for i in range(len(embeddings))]
        else:
            images = args.images[0] if len(args.images) == 1 and os.path.isdir(args.images[0]) else args.images
            result, names = retriever.search(images, args.top_k, verbose=True)
    except (ValueError, FileNotFoundError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    rows = []
    for row, name in enumerate(names):
        print(name)
        for rank in range(result.indices.shape[1]):
            label, index = result.labels[row, rank], result.indices[row, rank]
            path, distance = result.paths[row, rank], result.distances[row, rank]
            print(f"  {rank + 1:>3}  {label!s:<20} {distance:>10.4f}  {path or f'reference #{index}'}")
            rows.append([name, rank + 1, label, index, path, f"{distance:.6g}"])
    try:
        write_csv(args.out, HEADER, rows)
    except OSError as error:
        print(f"error: cannot write {args.out} ({error.strerror or error}); the results are above. Use --out FILE "
              "to write them elsewhere.", file=sys.stderr)
        return 2
    print(f"{len(names)} queries x {result.indices.shape[1]} references written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
