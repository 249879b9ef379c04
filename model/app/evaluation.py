"""Evaluating a trained run, and query-to-database retrieval over image folders with it (behind evaluate.py).

    results = evaluate_run("experiments/base_model", split="test")      # metrics by protocol
    retrieve_folders("experiments/base_model", "queries/", "database/", "out/", top_k=10)

`evaluate_run` loads a run (`model.app.runs.load_run`: its effective parameters, class mapping and
checkpoint), embeds what its dataset's protocol compares and returns the protocol's metrics
(`model.evaluation.protocols`): labelled data against the train split and leave-one-out, re-ID query
against gallery, places query against database. `eval_size` caps the evaluated queries to a seeded
random subset. Flip test-time augmentation (`flip=True`, the re-ID custom of Hermans et al. 2017) embeds
every image and its horizontal mirror and uses the mean of the two embeddings.

`retrieve_folders` needs no labels: `model.retrieval.folders.retrieve_folders` with the run's network.
"""
import math

import numpy as np

from model.app import adapter
from model.app.runs import UNTRAINED, is_untrained, load_params, load_run
from model.atomic import write_json
from model.retrieval import folders
from model.retrieval.embed import embed_split
from model.run import RunFolder

SPLITS = ("test", "validation")
CMC_RANKS = (1, 5, 10, 20)  # ranks of the CMC curve shown in the table (the JSON has all of them)


def evaluate_run(model_dir, split="test", checkpoint=None, flip=False, verbose=True, rerank=False):
    """Evaluate a run on one split with its dataset's protocol (see the module docstring).

    Args:
        model_dir: the run folder (effective_params.json, classes.json, checkpoints/), or a folder with a
            params.json only, never trained.
        split: "test" or "validation" (labelled datasets only).
        checkpoint: "best", "latest", or "untrained": the network training starts from, seeded and after
            its family's before-fit steps (`model.app.runs.load_untrained_run`), to see what training adds.
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
    protocol = adapter.protocol(params)
    protocol.check_split(source.splits, split, params.dataset)
    results = {"dataset": params.dataset, "protocol": source.protocol, "split": split, "checkpoint": checkpoint,
               "flip": flip, "rerank": rerank}

    def embed(data):
        return embed_split(network, data, image_size=params.image_size, channels=params.channels, flip=flip,
                           verbose=verbose)

    results.update(protocol.evaluate(source.splits, split, embed, eval_size=params.eval_size, seed=params.seed,
                                     rerank=rerank))
    return results


def retrieve_folders(model_dir, query_dir, db_dir, out_dir, top_k=10, checkpoint="best", flip=False, verbose=True):
    """`model.retrieval.folders.retrieve_folders` with the network of a run's `checkpoint` ("best" or "latest"),
    at the run's image size and channels."""
    folder = RunFolder(model_dir)
    params, network = load_params(folder), folder.load_network(checkpoint)
    return folders.retrieve_folders(network, query_dir, db_dir, out_dir, image_size=params.image_size,
                                    channels=params.channels, top_k=top_k, flip=flip, verbose=verbose)


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

