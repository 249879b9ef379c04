"""Query-to-database retrieval over two image folders with a network, no labels needed.

    retrieve_folders(network, "queries/", "database/", "out/", image_size=28, channels=1, top_k=10)

embeds both folder trees (`model.retrieval.embed`) and writes, for every query, its `top_k` nearest
database images (exact euclidean search, `model.retrieval.index.knn`), both sets of embeddings with their
paths and the data report (files left out, with reasons). Each file is written atomically; the output
folder must be new, empty or an earlier output (`model.retrieval.outputs`), and a rerun replaces every
output file.
"""
import os

from model.atomic import save_array, write_csv, write_text
from model.data.report import write_report
from model.retrieval.embed import embed_folder
from model.retrieval.index import knn
from model.retrieval.outputs import check_output_folder

OUTPUT_FILES = ("retrieved.csv", "query_embeddings.npy", "query_paths.txt", "database_embeddings.npy",
                "database_paths.txt", "data_report.csv")


def retrieve_folders(network, query_dir, db_dir, out_dir, *, image_size, channels, top_k=10, flip=False,
                     verbose=True):
    """Embed two image folders with `network` and write each query's top_k nearest database images.

    Writes into `out_dir` (replacing the files of a previous output there):
        retrieved.csv            query,rank,database,distance: Q × min(top_k, N) rows, rank 1 nearest,
                                 euclidean distance, paths relative to query_dir and db_dir
        query_embeddings.npy     float32 [Q, E], rows in the order of query_paths.txt
        query_paths.txt          one relative path per line
        database_embeddings.npy  float32 [N, E], rows in the order of database_paths.txt
        database_paths.txt
        data_report.csv          item,split,problem,detail of every file left out (header only if none)

    Args:
        network: the embedding network; image_size, channels: what it reads.
        query_dir, db_dir: folders searched recursively for images (`model.data.images.IMAGE_EXTENSIONS`).
        out_dir: the output folder: new, empty, or a previous output of this function, outside both
            image folders.
        top_k: number of database images per query (at most the database size).
        flip: flip test-time augmentation.
        verbose: progress bars.

    Returns:
        (distances `[Q, k]`, indices `[Q, k]`, query paths, database paths).
    """
    check_output_folder(out_dir, OUTPUT_FILES, query_dir, db_dir, what="retrieval output")
    report = []
    reading = {"image_size": image_size, "channels": channels, "flip": flip, "verbose": verbose, "report": report}
    query_emb, query_paths = embed_folder(network, query_dir, split="query", **reading)
    db_emb, db_paths = embed_folder(network, db_dir, split="database", **reading)
    distances, indices = knn(query_emb, db_emb, top_k)  # [Q, k] each
    os.makedirs(out_dir, exist_ok=True)
    write_csv(os.path.join(out_dir, "retrieved.csv"), ["query", "rank", "database", "distance"],
              ([query, rank, db_paths[index], f"{distance:.6g}"]
               for row, query in enumerate(query_paths)
               for rank, (index, distance) in enumerate(zip(indices[row], distances[row], strict=True), start=1)))
    for name, embeddings, paths in (("query", query_emb, query_paths), ("database", db_emb, db_paths)):
        save_array(os.path.join(out_dir, f"{name}_embeddings.npy"), embeddings)
        write_text(os.path.join(out_dir, f"{name}_paths.txt"), "".join(f"{path}\n" for path in paths))
    write_report(report, os.path.join(out_dir, "data_report.csv"))
    return distances, indices, query_paths, db_paths
