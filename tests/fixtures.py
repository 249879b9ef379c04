"""Shared test data: the tiny digits experiment, model parameters, and a small image-folder tree."""
import numpy as np
from PIL import Image

# A few steps of the MNIST convnet on scikit-learn's 8×8 digits: seconds per run.
DIGITS = {
    "model": "mnist_convnet",
    "dataset": "digits",
    "image_size": 8,
    "num_channels": 4,
    "embedding_size": 8,
    "loss": "batch_all",
    "classes_per_batch": 5,
    "images_per_class": 4,
    "validation_size": 100,
    "num_epochs": 2,
    "steps_per_epoch": 3,
    "learning_rate": 0.003,
    "save_summary_steps": 1,
    "seed": 1,
}


def write_folder_tree(root):
    """root/{train,test}/{cat,dog,eel}/*.png: 6 train and 3 test random 12×10 RGB images per class."""
    rng = np.random.default_rng(0)
    for split, per_class in (("train", 6), ("test", 3)):
        for name in ("cat", "dog", "eel"):
            folder = root / split / name
            folder.mkdir(parents=True)
            for i in range(per_class):
                pixels = rng.integers(0, 255, size=(12, 10, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(folder / f"{i}.png")
    return str(root)


# Small networks of each family, as keyword arguments of their builders (`model.nets.build_network`).
SMALL_NETWORKS = {
    "netvlad": dict(image_size=32, channels=3, num_channels=4, use_batch_norm=False, bn_momentum=0.9, weights=None,
                    backbone="small", num_clusters=3, vladv2=False, netvlad_dim=None, pooling="netvlad"),
    "mnist_convnet": dict(image_size=32, channels=3, num_channels=4, conv_blocks=2, dropout=0.0, use_batch_norm=False,
                          bn_momentum=0.9, embedding_size=8, l2_normalize=False),
    "trinet": dict(image_size=32, channels=3, embedding_size=8, weights=None, bn_momentum=0.9, l2_normalize=False),
}


def build_small(model="netvlad", **overrides):
    """A small network of family `model` (`SMALL_NETWORKS`, with `overrides`), built by its registered builder."""
    from model.nets import build_network

    return build_network(model, **{**SMALL_NETWORKS.get(model, {}), **overrides})


def write_cub_tree(root, num_classes=6, per_class=4, size=(12, 10)):
    """A CUB-200-2011 layout under root: classes.txt, images.txt, image_class_labels.txt (ids 1..N, listed
    in a shuffled order) and images/<class>/<name>.jpg, random RGB. Returns {image id: (path, class id)}."""
    rng = np.random.default_rng(1)
    classes = {class_id: f"{class_id:03d}.Bird_{class_id}" for class_id in range(1, num_classes + 1)}
    images = {}
    for class_id, name in classes.items():
        (root / "images" / name).mkdir(parents=True)
        for i in range(per_class):
            path = f"{name}/{name[4:]}_{i:04d}.jpg"
            pixels = rng.integers(0, 255, size=(*size, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / "images" / path)
            images[len(images) + 1] = (path, class_id)
    order = rng.permutation(sorted(images))
    (root / "classes.txt").write_text("".join(f"{class_id} {name}\n" for class_id, name in classes.items()))
    (root / "images.txt").write_text("".join(f"{i} {images[i][0]}\n" for i in order))
    (root / "image_class_labels.txt").write_text("".join(f"{i} {images[i][1]}\n" for i in order))
    return images


def write_inshop_tree(root, num_items=6, per_item=4, size=(12, 10)):
    """An In-shop layout under root: list_eval_partition.txt and img/<item>/<n>.jpg, random RGB; the first
    half of the items train, the others have their first image as query and the rest in the gallery."""
    rng = np.random.default_rng(2)
    rows = []
    for item in range(num_items):
        (root / "img" / f"id_{item:08d}").mkdir(parents=True)
        for i in range(per_item):
            name = f"img/id_{item:08d}/{i:02d}_front.jpg"
            Image.fromarray(rng.integers(0, 255, size=(*size, 3), dtype=np.uint8)).save(root / name)
            status = "train" if item < num_items // 2 else "query" if i == 0 else "gallery"
            rows.append(f"{name} id_{item:08d} {status}")
    header = [str(len(rows)), "image_name item_id evaluation_status"]
    (root / "list_eval_partition.txt").write_text("\n".join(header + rows) + "\n")


def write_places_world(root, num_database=120, num_queries=40, area=240.0, pixels_per_metre=0.5, size=24, seed=0):
    """A places CSV dataset (no place_id: train/ and test/ with database.csv and queries.csv) where appearance
    follows position: the world is one smooth random RGB texture, and the image taken at UTM (e, n) is the
    `size`×`size` window of it at (e, n)·`pixels_per_metre`. Images 10 m apart share most of their window,
    images 50 m apart little. Queries are seen in other conditions (brightness and noise). Train and test
    lie in separate areas of `area` metres a side (test 2·area metres east of train), positions uniform.

    Returns {(stage, kind): utm float64 [N, 2]}, stage "train"/"test", kind "database"/"queries".
    """
    import scipy.ndimage

    rng = np.random.default_rng(seed)
    origin = np.array([584000.0, 4477000.0])  # UTM-sized coordinates, as in Pittsburgh
    span = int(np.ceil(3 * area * pixels_per_metre)) + size + 1, int(np.ceil(area * pixels_per_metre)) + size + 1
    texture = scipy.ndimage.gaussian_filter(rng.normal(size=(span[1], span[0], 3)), sigma=(2.0, 2.0, 0))
    texture = 127.0 + 60.0 * texture / texture.std()  # [rows = north, columns = east, 3]
    positions = {}
    for stage, east_offset in (("train", 0.0), ("test", 2 * area)):
        for kind, count in (("database", num_database), ("queries", num_queries)):
            utm = rng.uniform(0.0, area, size=(count, 2)) + [east_offset, 0.0]
            lines = ["path,easting,northing"]
            for i, (east, north) in enumerate(utm):
                column, row = int(round(east * pixels_per_metre)), int(round(north * pixels_per_metre))
                window = texture[row : row + size, column : column + size]
                if kind == "queries":
                    window = window * rng.uniform(0.8, 1.2) + rng.normal(0.0, 8.0, size=window.shape)
                path = f"{kind}/{i:04d}.png"
                (root / stage / kind).mkdir(parents=True, exist_ok=True)
                Image.fromarray(np.clip(window, 0, 255).astype(np.uint8)).save(root / stage / path)
                lines.append(f"{path},{origin[0] + east:.3f},{origin[1] + north:.3f}")
            (root / stage / f"{kind}.csv").write_text("\n".join(lines) + "\n")
            positions[stage, kind] = utm + origin
    return positions


def train_digits_run(tmp_path_factory, name, **changes):
    """A run folder of the digits experiment trained for one epoch (for module-scoped fixtures)."""
    from model.app.training import train
    from model.params import Params

    model_dir = str(tmp_path_factory.mktemp(name) / "run")
    train(Params.from_dict({**DIGITS, "num_epochs": 1, **changes}), model_dir)
    return model_dir


MARKET1501_FOLDERS = {"train": "bounding_box_train", "query": "query", "test": "bounding_box_test"}


def market1501_names(split):
    """The real Market-1501 file names of `split` ("train", "query", "test"), one per line in
    shared/data/market1501/<split>.names beside the repository (or beside its worktrees), or None."""
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    for shared in (root / "shared", root.parent / "shared", root.parent.parent / "shared"):
        path = shared / "data" / "market1501" / f"{split}.names"
        if path.is_file():
            return path.read_text().split()
    return None


def _synthetic_market1501_names(split, identities):
    """Names in the Market-1501 pattern PPPP_cCsS_FFFFFF_BB.jpg when the real lists are not at hand: two frames of
    each identity by each camera, as the real lists have several, so that a hold-out of whole identities has a
    gallery image from another camera for its queries (the first image of each identity and camera)."""
    names = []
    for pid in range(1, identities * 2 + 1):
        for camera in range(1, 7):
            names += [f"{pid:04d}_c{camera}s1_{pid * 100 + camera * 10 + frame:06d}_00.jpg" for frame in range(2)]
    if split == "test":
        names += [f"-1_c{camera}s2_{camera:06d}_00.jpg" for camera in range(1, 4)]
        names += [f"0000_c{camera}s2_{camera:06d}_01.jpg" for camera in range(1, 4)]
    return sorted(names)


def write_market1501_tree(root, identities=12, per_identity=6, size=(64, 32), seed=0, palette=None):
    """A small Market-1501 tree under root (bounding_box_train/, query/, bounding_box_test/) with real file names
    (`market1501_names`; Market-1501-pattern names when the lists are missing): the first `identities` train
    identities with up to `per_identity` images each; the first `identities` query identities with up to 2 query
    images each and up to `per_identity` gallery images of each, plus a few junk (-1) and distractor (0000)
    images. Each identity is one random colour with noise, so that the identities can be told apart; with a
    `palette` of n colours, a harder tree: each identity wears two of them (upper and lower half), so that
    identities share colours, and each image has a brightness of its own (×0.6 to ×1.4).

    Returns:
        {"train" | "query" | "test": the file names written}.
    """
    rng = np.random.default_rng(seed)
    colours, swatches = {}, rng.uniform(0, 255, size=(palette or 1, 3))

    def pid_of(name):
        return name.split("_")[0]

    def image(name):
        pid = pid_of(name)
        if pid not in colours:
            colours[pid] = rng.uniform(0, 255, size=3) if palette is None else swatches[rng.integers(0, palette, 2)]
        if palette is None:
            pixels = colours[pid] + rng.normal(0, 25, size=(*size, 3))
        else:
            upper, lower = colours[pid]
            halves = np.where(np.arange(size[0])[:, None, None] < size[0] // 2, upper, lower)  # [h, 1, 3]
            pixels = halves * rng.uniform(0.6, 1.4) + rng.normal(0, 25, size=(*size, 3))
        return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))

    def first(names, pids, per):
        kept, count = [], {}
        for name in names:
            pid = pid_of(name)
            if pid in pids and count.get(pid, 0) < per:
                kept.append(name)
                count[pid] = count.get(pid, 0) + 1
        return kept

    lists = {split: market1501_names(split) or _synthetic_market1501_names(split, identities)
             for split in MARKET1501_FOLDERS}
    train_pids = list(dict.fromkeys(pid_of(name) for name in lists["train"]))[:identities]
    query_pids = [pid for pid in dict.fromkeys(pid_of(name) for name in lists["query"]) if pid not in ("-1", "0000")]
    query_pids = query_pids[:identities]
    chosen = {
        "train": first(lists["train"], set(train_pids), per_identity),
        "query": first(lists["query"], set(query_pids), 2),
        "test": first(lists["test"], set(query_pids), per_identity) + first(lists["test"], {"-1", "0000"}, 3),
    }
    for split, names in chosen.items():
        folder = root / MARKET1501_FOLDERS[split]
        folder.mkdir(parents=True, exist_ok=True)
        for name in names:
            image(name).save(folder / name, format="JPEG")
    return chosen
