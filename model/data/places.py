"""Place recognition with GPS ground truth: database and query images with UTM coordinates.

The NetVLAD setting (Arandjelović et al., "NetVLAD: CNN architecture for weakly supervised place
recognition", CVPR 2016): a query is answered correctly when a retrieved database image lies
within `radius` metres (25 m) of it. `data_dir` is one of:
  * CSV: `data_dir/train/` and `data_dir/test/`, each with `database.csv` and `queries.csv`
    holding a header and rows `path,easting,northing[,place_id]`; paths are relative to the CSV's
    folder (or absolute), and every CSV has a place_id column or none does;
  * Pittsburgh (the NetVLAD code's layout): `data_dir/datasets/<name>_train.mat` and
    `<name>_test.mat` (`dbStruct` with `dbImage`, `utmDb` [2, N], `qImage`, `utmQ` [2, M], ...),
    database images under `data_dir/`, queries under `data_dir/queries_real/`. With several
    <name>s (pitts30k, pitts250k), give `data_dir` as `<root>/datasets/<name>`.
The "train" split holds all train images (database and queries) grouped into places, for losses
mined in P×K batches: the place_id when given, else a square grid cell of side radius/√2, so that
any two images of one place are within the radius. "database" and "query" come from the test
part; their labels are the place ids when given, else -1. Coordinates must be finite numbers
(an error names the file and line, or the .mat field and index); CSVs may start with a UTF-8 BOM.

Training by GPS instead of places as classes (`places_pairing`, params `places_training: "gps"`, the
NetVLAD recipe, in gps.py): `gps_places` makes one group per train query, the query and the database
images within `positive_radius`, from which P×K batches are drawn; `GpsRelation` then says, per batch,
which pairs are positives (within `nontrivial_radius`, 10 m), negatives (beyond `positive_radius`, 25 m)
or neither, from the images' UTM coordinates. The train split's `is_query` tells queries apart. With
`mining` "cached", the NetVLAD reference's tuples mined in a feature cache (cached.py) instead.
"""
import csv
import dataclasses
import glob
import logging
import os

import numpy as np
import scipy.io

from model.data import cached, gps
from model.data.datasets import Loaded, TrainingPairs, register_dataset
from model.data.holdout import hold_out_queries
from model.data.images import check_images
from model.data.report import report_small_classes
from model.data.splits import Split, class_mapping, labels_for
from model.registry import FLOAT, INT, STR, Option

_CSV_FILES = {"database": "database.csv", "query": "queries.csv"}
_MAT_FIELDS = ("dbImage", "utmDb", "qImage", "utmQ")

logger = logging.getLogger(__name__)


def place_cells(utm, radius):
    """Group positions into places: square grid cells of side radius / √2.

    Two positions in one cell are at most a cell diagonal, radius, apart.

    Args:
        utm: float [N, 2] easting/northing in metres.
        radius: float, metres.

    Returns:
        [N] strings "<column>_<row>" naming each position's cell.
    """
    cells = np.floor(np.asarray(utm, dtype=np.float64) / (radius / np.sqrt(2.0))).astype(np.int64)  # [N, 2]
    return [f"{column}_{row}" for column, row in cells]


@dataclasses.dataclass
class _Images:
    """Images of one part of a places dataset: paths [N], utm float64 [N, 2], place ids [N] or None,
    is_query bool [N] (where database and queries are merged) or None."""

    paths: list[str]
    utm: np.ndarray
    place_ids: list[str] | None
    is_query: np.ndarray | None = None

    def take(self, keep):
        """The images at the indices `keep`."""
        return _Images([self.paths[i] for i in keep], self.utm[keep],
                       None if self.place_ids is None else [self.place_ids[i] for i in keep],
                       None if self.is_query is None else self.is_query[keep])

    def merged_with_queries(self, queries):
        """This database followed by `queries`, with is_query telling them apart."""
        ids = None if self.place_ids is None or queries.place_ids is None else self.place_ids + queries.place_ids
        is_query = np.concatenate([np.zeros(len(self.paths), bool), np.ones(len(queries.paths), bool)])
        return _Images(self.paths + queries.paths, np.concatenate([self.utm, queries.utm]), ids, is_query)


def _read_csv(csv_path):
    """_Images of one places CSV; errors name the file and line."""
    folder = os.path.dirname(csv_path)
    try:
        with open(csv_path, newline="", encoding="utf-8-sig") as file:  # -sig: a BOM is not part of "path"
            reader = csv.DictReader(file)
            rows = list(reader)
            columns = reader.fieldnames or []
    except (OSError, csv.Error, UnicodeDecodeError) as error:
        raise FileNotFoundError(f"cannot read places CSV {csv_path}: {error}") from error
    missing = [column for column in ("path", "easting", "northing") if column not in columns]
    if missing:
        raise ValueError(f"{csv_path} lacks the columns {missing}: expected a header path,easting,northing"
                         "[,place_id]")
    if not rows:
        raise ValueError(f"{csv_path} lists no images")
    paths, utm = [], []
    for line, row in enumerate(rows, start=2):
        try:
            position = (float(row["easting"]), float(row["northing"]))
        except (TypeError, ValueError):
            position = (np.nan, np.nan)
        if not np.isfinite(position).all():  # float() reads "nan" and "inf"
            raise ValueError(f"{csv_path} line {line}: easting and northing must be finite numbers (metres), got "
                             f"{row['easting']!r}, {row['northing']!r}")
        utm.append(position)
        if not row["path"] or ("place_id" in columns and not row["place_id"]):
            raise ValueError(f"{csv_path} line {line}: empty path or place_id")
        paths.append(os.path.join(folder, row["path"]))
    missing_files = [(line, path) for line, path in enumerate(paths, start=2) if not os.path.isfile(path)]
    if missing_files:
        raise FileNotFoundError(f"{len(missing_files)} images listed in {csv_path} do not exist, e.g. "
                                + ", ".join(f"line {line}: {path}" for line, path in missing_files[:5]))
    place_ids = [row["place_id"] for row in rows] if "place_id" in columns else None
    return _Images(paths, np.array(utm, dtype=np.float64).reshape(-1, 2), place_ids)


def _csv_parts(data_dir):
    """{"train": train database + queries, "database", "query": test ones} from the four CSVs."""
    read = {}
    for stage in ("train", "test"):
        for kind, file_name in _CSV_FILES.items():
            csv_path = os.path.join(data_dir, stage, file_name)
            if not os.path.isfile(csv_path):
                raise FileNotFoundError(f"places CSV {csv_path} does not exist (expected {data_dir}/train/ "
                                        f"and {data_dir}/test/ with {' and '.join(_CSV_FILES.values())})")
            read[stage, kind] = _read_csv(csv_path)
    with_ids = [part for part in read.values() if part.place_ids is not None]
    if with_ids and len(with_ids) != len(read):
        raise ValueError(f"some places CSVs in {data_dir} have a place_id column and some do not; give it in "
                         "all four or in none")
    return {"train": read["train", "database"].merged_with_queries(read["train", "query"]),
            "database": read["test", "database"], "query": read["test", "query"]}


def _find_struct_prefix(data_dir):
    """Path prefix P of the Pittsburgh structs P_train.mat / P_test.mat, or None for no structs."""
    if os.path.isfile(data_dir + "_train.mat"):
        return data_dir
    found = sorted(glob.glob(os.path.join(data_dir, "datasets", "*_train.mat")))
    if len(found) > 1:
        names = [os.path.basename(path)[: -len("_train.mat")] for path in found]
        raise ValueError(f"{data_dir}/datasets holds several dataset specifications {names}; choose one with "
                         f"data_dir={data_dir}/datasets/<name>")
    return found[0][: -len("_train.mat")] if found else None


def _read_struct(mat_path, image_root, radius):
    """{"database": _Images, "query": _Images} of one Pittsburgh dbStruct .mat file."""
    if not os.path.isfile(mat_path):
        raise FileNotFoundError(f"NetVLAD dataset specification {mat_path} does not exist")
    try:
        struct = scipy.io.loadmat(mat_path, squeeze_me=True, struct_as_record=False)["dbStruct"]
    except Exception as error:  # scipy raises many types on a damaged file (IndexError, MatReadError, ...)
        raise ValueError(f"cannot read a NetVLAD dbStruct from {mat_path}: {error!r}") from error
    missing = [field for field in _MAT_FIELDS if not hasattr(struct, field)]
    if missing:
        raise ValueError(f"dbStruct in {mat_path} lacks the fields {missing}")
    threshold = getattr(struct, "posDistThr", radius)
    if float(threshold) != float(radius):
        logger.warning("%s sets posDistThr=%s m but positive_radius=%s m is used", mat_path, threshold, radius)
    parts = {}
    queries_root = os.path.join(image_root, "queries_real")
    for kind, image_field, utm_field, folder in (("database", "dbImage", "utmDb", image_root),
                                                 ("query", "qImage", "utmQ", queries_root)):
        names = [str(name) for name in np.atleast_1d(getattr(struct, image_field))]
        try:
            utm = np.asarray(getattr(struct, utm_field), dtype=np.float64)  # stored [2, N]; [2] when N = 1
        except (TypeError, ValueError) as error:
            raise ValueError(f"dbStruct in {mat_path}: {utm_field} should hold numbers: {error}") from None
        utm = utm[:, None] if utm.ndim == 1 else utm
        if utm.ndim != 2 or utm.shape[0] != 2 or utm.shape[1] != len(names):
            raise ValueError(f"dbStruct in {mat_path}: {utm_field} should be [2, {len(names)}] (easting and "
                             f"northing of the {len(names)} {image_field}), got {utm.shape}")
        bad = np.flatnonzero(~np.isfinite(utm).all(axis=0))
        if len(bad):
            raise ValueError(f"dbStruct in {mat_path}: {utm_field} holds {len(bad)} positions that are not finite "
                             f"numbers, e.g. at index {bad[0]} ({image_field} {names[bad[0]]}): {utm[:, bad[0]]}")
        paths = [os.path.join(folder, name) for name in names]
        missing_files = [path for path in paths if not os.path.isfile(path)]
        if missing_files:
            raise FileNotFoundError(f"{len(missing_files)} images listed in {mat_path} ({image_field}) do "
                                    f"not exist, e.g. {missing_files[:5]}")
        parts[kind] = _Images(paths, utm.T, None)
    return parts


def _mat_parts(prefix, radius):
    """{"train": train database + queries, "database", "query": test ones} from the Pittsburgh structs."""
    image_root = os.path.dirname(os.path.dirname(prefix))
    train = _read_struct(f"{prefix}_train.mat", image_root, radius)
    test = _read_struct(f"{prefix}_test.mat", image_root, radius)
    return {"train": train["database"].merged_with_queries(train["query"]), "database": test["database"],
            "query": test["query"]}


def _find_parts(data_dir, radius):
    """(parts as in _csv_parts, the folder that display names are relative to) for either layout."""
    prefix = _find_struct_prefix(data_dir)
    if prefix is not None:
        return _mat_parts(prefix, radius), os.path.dirname(os.path.dirname(prefix))
    if os.path.isdir(os.path.join(data_dir, "train")) or os.path.isdir(os.path.join(data_dir, "test")):
        return _csv_parts(data_dir), data_dir
    raise FileNotFoundError(f"no places dataset in {data_dir}: expected train/ and test/ folders with "
                            "database.csv and queries.csv, or NetVLAD specifications "
                            "datasets/<name>_train.mat and datasets/<name>_test.mat")


def load_places(data_dir, positive_radius=25.0, class_names=None, report=None, places_training="labels"):
    """Load a place-recognition dataset (CSV or Pittsburgh .mat, see the module docstring).

    Args:
        data_dir: absolute path of the dataset folder (or `<root>/datasets/<name>` for Pittsburgh).
        positive_radius: metres; the size of the grid cells that group train images into places.
        class_names: saved place names to reuse, or None.
        report: a list that gets a ReportEntry for everything left out or flagged, or None.
        places_training: "labels" (the places, or grid cells, are the classes trained on: single-image ones are
            reported) or "gps" (training pairs images by GPS and never sees the places: nothing to report).

    Returns:
        (splits, class_names): {"train", "database", "query": Split with utm [N, 2]}.
    """
    parts, root = _find_parts(data_dir, positive_radius)
    decodable = check_images([path for part in parts.values() for path in part.paths], data_dir, report,
                             [name for name, part in parts.items() for _ in part.paths])
    start = 0
    for name, part in parts.items():
        parts[name] = part.take(np.flatnonzero(decodable[start:start + len(part.paths)]))
        start += len(part.paths)
        if not parts[name].paths:
            raise FileNotFoundError(f"no decodable {name} images in {data_dir}")
    with_ids = parts["train"].place_ids is not None
    places = {name: part.place_ids for name, part in parts.items()}
    if not with_ids:
        places["train"] = place_cells(parts["train"].utm, positive_radius)
    mapping = class_mapping(places["train"], (places["database"] or []) + (places["query"] or []),
                            class_names, data_dir)
    splits = {}
    for name, part in parts.items():
        labels = (np.full(len(part.paths), -1, dtype=np.int32) if places[name] is None
                  else labels_for(places[name], mapping))
        splits[name] = Split(labels=labels, paths=part.paths, utm=part.utm, is_query=part.is_query,
                             names=[os.path.relpath(path, root) for path in part.paths])
    if places_training == "labels":  # GPS training and cached mining pair images by distance, not by these places
        report_small_classes(splits["train"], "train", mapping, data_dir, report)
    return splits, mapping


def places_pairing(split, *, places_training="gps", mining="global", nontrivial_radius=10.0, positive_radius=25.0,
                   margin=0.1, cache_refresh=1000, pipeline=None):
    """How training on the places train `split` forms pairs: a `TrainingPairs`, or None for the labels.

    With `places_training` "gps" (the NetVLAD recipe): P×K batches of GPS places, each a train query and the
    database images within `positive_radius`; pairs within `nontrivial_radius` are positives, beyond
    `positive_radius` negatives, in between neither. No grid cells. With `mining` "cached", the reference's
    tuples mined in a feature cache (`model.data.cached`) instead, with the triplet `margin`, refreshed every
    `cache_refresh` queries, in batches that `pipeline` describes (`cached.cached_dataset`'s keyword arguments).
    With "labels", the place ids (or grid cells) are the classes: None.
    """
    if mining == "cached":
        miner = cached.CachedMiner(split, nontrivial_radius, positive_radius, margin,
                                   queries_per_batch=pipeline["batch_size"])
        return TrainingPairs(None, cached.tuple_relation,
                             batches=lambda start_step: cached.cached_dataset(miner, split, start_step=start_step,
                                                                              **pipeline),
                             cache=cached.feature_cache(miner, split, cache_refresh, **pipeline))
    if places_training != "gps":
        return None
    places, left_out = gps.gps_places(split, positive_radius)
    if left_out:
        logger.warning("%d of %d train queries have no database image within %s m and form no place",
                       left_out, int(split.is_query.sum()), positive_radius)
    return TrainingPairs(places, gps.GpsRelation(split.utm, nontrivial_radius, positive_radius))


def _gps_training(values, chosen):
    """Places trained by GPS: P×K batches of places, a pair loss, positives nearer than negatives."""
    if values["dataset"] != "places" or values["places_training"] != "gps" or values["mining"] == "cached":
        return None
    if values["nontrivial_radius"] > values["positive_radius"]:
        return (f'"nontrivial_radius" ({values["nontrivial_radius"]} m, positives) must be at most '
                f'"positive_radius" ({values["positive_radius"]} m, beyond which pairs are negatives)')
    if values["classes_per_batch"] is None:
        return ('"places_training" "gps" draws P×K batches of places (a query and the database images within '
                'positive_radius): set "classes_per_batch" (P) and "images_per_class" (K), or "places_training" '
                'to "labels"')
    if not chosen["loss"].component.mines_in_batch:
        return (f'loss {values["loss"]!r} learns one proxy per class, and "places_training" "gps" has no classes; '
                'choose a pair or triplet loss, or "places_training" "labels"')
    return None


POSITIVE_RADIUS = Option("positive_radius", (INT, FLOAT), 25.0,
                         "places: metres within which a database image is a positive", positive=True)
NONTRIVIAL_RADIUS = Option("nontrivial_radius", (INT, FLOAT), 10.0,
                           "places, GPS training: metres within which a pair is a positive", positive=True)
PLACES_TRAINING = Option("places_training", (STR,), "gps",
                         "places: P×K batches of GPS places, pairs by distance (gps) or place_id / grid cells as "
                         "classes", choices=("gps", "labels"))


@register_dataset("places", options=(POSITIVE_RADIUS, PLACES_TRAINING), rules=(_gps_training,), protocol="places",
                  hold_out=hold_out_queries, pairing=places_pairing)
def places(data_dir, class_names=None, report=None, positive_radius=25.0, places_training="labels"):
    """A place-recognition dataset (see the module docstring): train, database and query, with UTM coordinates;
    its train places (or grid cells) are reported as classes only when `places_training` is "labels"."""
    splits, names = load_places(data_dir, positive_radius, class_names, report, places_training)
    return Loaded(splits, names, 3, None)
