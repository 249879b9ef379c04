"""Evaluating a trained run, and query-to-database retrieval over image folders (behind evaluate.py).

    results = evaluate_run("experiments/base_model", split="test")      # metrics by protocol
    retrieve_folders("experiments/base_model", "queries/", "database/", "out/", top_k=10)

`evaluate_run` loads a run (`model.run.load_run`: its effective parameters, class mapping and
checkpoint), embeds what its dataset's protocol compares and returns the protocol's metrics
(`model.data.protocols`): labelled data against the train split and leave-one-out, re-ID query
against gallery, places query against database. `params.eval_size` caps the evaluated queries to a
seeded random subset. Flip test-time augmentation (`flip=True`, the re-ID custom of Hermans et al.
2017) embeds every image and its horizontal mirror and uses the mean of the two embeddings.

`retrieve_folders` needs no labels: it embeds two folder trees and writes, for every query, its
`top_k` nearest database images (`knn`, exact euclidean search), plus both sets of embeddings with
their paths and the data report (files left out, with reasons). Each file is written atomically; the
output folder must be new, empty or an earlier output (it is refused if it holds anything else or
overlaps the image folders), and a rerun replaces every output file.
"""
import csv
import math
import os

import numpy as np
import tensorflow as tf

from model import metrics
from model.atomic import atomic_file, save_array, write_json, write_text
from model.data import Split, make_dataset, write_report
from model.data.images import find_images
from model.data.protocols import PROTOCOLS
from model.run import UNTRAINED, RunFolder, is_untrained, load_run

SPLITS = ("test", "validation")
OUTPUT_FILES = ("retrieved.csv", "query_embeddings.npy", "query_paths.txt", "database_embeddings.npy",
                "database_paths.txt", "data_report.csv")
CMC_RANKS = (1, 5, 10, 20)  # ranks of the CMC curve shown in the table (the JSON has all of them)


def embed_split(network, split, params, flip=False, verbose=True):
    """Embeddings `[N, E]` of a Split, in order; with `flip`, the mean of each image's and its mirror's."""
    dataset = make_dataset(split, image_size=params.image_size, channels=params.channels, training=False)
    embeddings, _ = metrics.embed(network, dataset, verbose)
    if flip:
        mirrored = dataset.map(lambda images, labels: (tf.image.flip_left_right(images), labels))
        embeddings = (embeddings + metrics.embed(network, mirrored, verbose)[0]) / 2
    return embeddings


def evaluate_run(model_dir, split="test", checkpoint=None, flip=False, verbose=True, rerank=False):
    """Evaluate a run on one split with its dataset's protocol (see the module docstring).

    Args:
        model_dir: the run folder (effective_params.json, classes.json, checkpoints/), or a folder with a
            params.json only, never trained.
        split: "test" or "validation" (labelled datasets only).
        checkpoint: "best", "latest", or "untrained": the network training starts from, seeded and after
            its family's before-fit steps (`model.run.load_untrained_run`), to see what training adds.
            None: "untrained" for a folder never trained (params.json only), else "best".
        flip: flip test-time augmentation.
        verbose: progress bars.
        rerank: re-ID with camera ids: also the metrics after k-reciprocal re-ranking (Zhong et al.
            2017), as "query_vs_gallery_reranked".

    Returns:
        dict: dataset, protocol, split, checkpoint, flip, rerank, and one dict of metrics per comparison
        ("vs_train" and "leave_one_out"; "query_vs_gallery"; or "query_vs_database").
    """
    if split not in SPLITS:
        raise ValueError(f"split={split!r}: expected one of {SPLITS}")
    if checkpoint is None:
        checkpoint = UNTRAINED if is_untrained(model_dir) else "best"
    params, source, network, _ = load_run(model_dir, checkpoint)
    protocol = PROTOCOLS[source.protocol]
    protocol.check_split(source, split, params.dataset)
    results = {"dataset": params.dataset, "protocol": source.protocol, "split": split, "checkpoint": checkpoint,
               "flip": flip, "rerank": rerank}
    results.update(protocol.evaluate(source, split, lambda data: embed_split(network, data, params, flip, verbose),
                                      params, rerank))
    return results


def json_safe(value):
    """`value` with numpy arrays and scalars as lists and numbers, dict keys as strings, NaN and inf as None."""
    if isinstance(value, dict):
        return {str(key): json_safe(item) for key, item in value.items()}
    if isinstance(value, (list, tuple, np.ndarray)):
        return [json_safe(item) for item in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def save_json(results, path):
    """Write `json_safe(results)` to `path` atomically (a temporary file renamed into place)."""
    write_json(path, json_safe(results))


def metrics_table(results):
    """The metrics of `evaluate_run` as an aligned text table: one row per metric, one column per comparison.

    recall@k and recall@N appear per k; the CMC curve at the ranks CMC_RANKS.
    """
    columns = {}
    for section, found in results.items():
        if not isinstance(found, dict):  # dataset, split, ...
            continue
        rows = {}
        for key, value in found.items():
            if isinstance(value, dict):
                name = key.rsplit("_at_", 1)[0]  # recall_at_k -> recall@1, recall@2, ...
                rows.update({f"{name}@{k}": v for k, v in value.items()})
            elif isinstance(value, np.ndarray):  # the CMC curve
                rows.update({f"{key}@{rank}": value[rank - 1] for rank in CMC_RANKS if rank <= len(value)})
            else:
                rows[key] = value
        columns[section] = rows
    names = list(dict.fromkeys(row for rows in columns.values() for row in rows))
    width = max(len(name) for name in names + ["metric"])
    widths = [max(len(name), 8) for name in columns]
    lines = ["  ".join(["metric".ljust(width)] + [name.rjust(w) for name, w in zip(columns, widths, strict=True)])]
    for row in names:
        cells = [_cell(rows.get(row)).rjust(w) for rows, w in zip(columns.values(), widths, strict=True)]
        lines.append("  ".join([row.ljust(width)] + cells))
    return "\n".join(lines)


def _cell(value):
    if value is None:
        return "-"
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    return f"{float(value):.4f}"


def embed_folder(network, params, folder, flip=False, verbose=True, report=None, split=""):
    """(embeddings `[N, E]`, relative paths `[N]`) of the images under `folder`
    (`model.data.images.find_images`; what it leaves out goes into `report` as `split`)."""
    paths = find_images(folder, report, split)
    split = Split(labels=np.zeros(len(paths)), paths=[os.path.join(folder, path) for path in paths], names=paths)
    return embed_split(network, split, params, flip, verbose), paths


def retrieve_folders(model_dir, query_dir, db_dir, out_dir, top_k=10, checkpoint="best", flip=False,
                     verbose=True):
    """Embed two image folders with a run's network and write each query's top_k nearest database images.

    Writes into `out_dir` (replacing the files of a previous output there):
        retrieved.csv            query,rank,database,distance: Q × min(top_k, N) rows, rank 1 nearest,
                                 euclidean distance, paths relative to query_dir and db_dir
        query_embeddings.npy     float32 [Q, E], rows in the order of query_paths.txt
        query_paths.txt          one relative path per line
        database_embeddings.npy  float32 [N, E], rows in the order of database_paths.txt
        database_paths.txt
        data_report.csv          item,split,problem,detail of every file left out (header only if none)

    Args:
        model_dir: the run folder; checkpoint: "best" or "latest"; flip: flip test-time augmentation.
        query_dir, db_dir: folders searched recursively for images (`model.data.images.IMAGE_EXTENSIONS`).
        out_dir: the output folder: new, empty, or a previous output of this function, outside both
            image folders.
        top_k: number of database images per query (at most the database size).
        verbose: progress bars.

    Returns:
        (distances `[Q, k]`, indices `[Q, k]`, query paths, database paths).
    """
    _check_output_folder(out_dir, query_dir, db_dir)
    folder = RunFolder(model_dir)
    params, network = folder.load_params(), folder.load_network(checkpoint)
    report = []
    query_emb, query_paths = embed_folder(network, params, query_dir, flip, verbose, report, "query")
    db_emb, db_paths = embed_folder(network, params, db_dir, flip, verbose, report, "database")
    distances, indices = metrics.knn(query_emb, db_emb, top_k)  # [Q, k] each
    os.makedirs(out_dir, exist_ok=True)
    with atomic_file(os.path.join(out_dir, "retrieved.csv")) as temporary, open(temporary, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["query", "rank", "database", "distance"])
        for row, query in enumerate(query_paths):
            for rank, (index, distance) in enumerate(zip(indices[row], distances[row], strict=True), start=1):
                writer.writerow([query, rank, db_paths[index], f"{distance:.6g}"])
    for name, embeddings, paths in (("query", query_emb, query_paths), ("database", db_emb, db_paths)):
        save_array(os.path.join(out_dir, f"{name}_embeddings.npy"), embeddings)
        write_text(os.path.join(out_dir, f"{name}_paths.txt"), "".join(f"{path}\n" for path in paths))
    write_report(report, os.path.join(out_dir, "data_report.csv"))
    return distances, indices, query_paths, db_paths


def _check_output_folder(out_dir, *inputs):
    """Refuse an output folder that holds anything but retrieval outputs, or that contains, is, or lies
    inside an input folder: nothing of the user's is ever replaced or mixed with the outputs."""
    out = os.path.realpath(out_dir)
    for given in inputs:
        folder = os.path.realpath(given)
        if out == folder or folder.startswith(out + os.sep) or out.startswith(folder + os.sep):
            raise ValueError(f"output folder {out_dir} and image folder {given} overlap (one holds the other); "
                             "choose an output folder outside the image folders")
    if os.path.exists(out_dir):
        if not os.path.isdir(out_dir):
            raise ValueError(f"output folder {out_dir} is a file; expected a folder for the retrieval output")
        others = sorted(set(os.listdir(out_dir)) - set(OUTPUT_FILES))
        if others:
            listed = ", ".join(others[:5]) + (", ..." if len(others) > 5 else "")
            raise ValueError(f"output folder {out_dir} holds files that are not retrieval outputs ({listed}): give "
                             "a new or empty folder, or the output folder of an earlier retrieval; nothing was changed")
