"""Adversarial tests of bundles: what a hostile tester did to export.py, search.py and the bundles they share,
each of which once lost data, went silently wrong or ended in a traceback (docs/reliability.md lists them).
One digits run is trained and exported once for the module; each test copies what it damages."""

import csv
import json
import os
import shutil
import stat
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

import export
import search
from tests.fixtures import train_digits_run

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return train_digits_run(tmp_path_factory, "bundles")


@pytest.fixture(scope="module")
def bundle(run):
    assert export.main(["--model_dir", run]) == 0
    return os.path.join(run, "export")


def copy_of(bundle, tmp_path, name="bundle"):
    destination = str(tmp_path / name)
    shutil.copytree(bundle, destination)
    return destination


def dead_pid():
    """The pid of a process that has ended (and been reaped)."""
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def test_export_never_replaces_a_folder_whose_entries_merely_carry_bundle_names(run, tmp_path, capsys):
    user = tmp_path / "u"
    (user / "index").mkdir(parents=True)
    (user / "index" / "index.html").write_text("page")
    (user / "manifest.json").write_text('{"mine": 1}')
    assert export.main(["--model_dir", run, "--out", str(user)]) == 2
    error = capsys.readouterr().err
    assert "not a bundle manifest" in error and str(user) in error and "nothing was changed" in error
    assert (user / "index" / "index.html").read_text() == "page"
    assert (user / "manifest.json").read_text() == '{"mine": 1}'
    (user / "manifest.json").unlink()  # bundle names only, no manifest at all: refused too
    assert export.main(["--model_dir", run, "--out", str(user)]) == 2
    assert "has no manifest.json" in capsys.readouterr().err
    assert (user / "index" / "index.html").read_text() == "page"
    assert sorted(os.listdir(tmp_path)) == ["u"]  # nothing was built beside it either


def test_export_removes_what_killed_exports_left_and_keeps_the_users_umask(run, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    os.chmod(out, 0o755)
    left = [f".out.partial-{dead_pid()}-k3j2", f".out.old-{dead_pid()}-x9", ".out.partial-a1b2c3"]  # last: older name
    live = ".out.partial-1-busy"  # pid 1 runs: a live writer's, left alone
    for name in (*left, live):
        (tmp_path / name / "saved_model").mkdir(parents=True)
    mask = os.umask(0o027)
    try:
        assert export.main(["--model_dir", run, "--out", str(out)]) == 0
        assert stat.S_IMODE(os.stat(out).st_mode) == 0o755  # the user's empty folder keeps its mode
        assert stat.S_IMODE(os.stat(out / "index").st_mode) == 0o750  # what export creates follows the umask
        fresh = tmp_path / "fresh"
        assert export.main(["--model_dir", run, "--out", str(fresh)]) == 0
        assert stat.S_IMODE(os.stat(fresh).st_mode) == 0o750
    finally:
        os.umask(mask)
    assert sorted(os.listdir(tmp_path)) == sorted(["fresh", "out", live])


@pytest.fixture(scope="module")
def queries(tmp_path_factory):
    """Three 8×8 gray query images."""
    folder = tmp_path_factory.mktemp("queries")
    rng = np.random.default_rng(0)
    for i in range(3):
        Image.fromarray(rng.integers(0, 256, size=(8, 8), dtype=np.uint8)).save(folder / f"{i}.png")
    return str(folder)


def test_search_out_never_overwrites_what_it_did_not_write(bundle, queries, tmp_path, capsys):
    image = os.path.join(queries, "1.png")
    before = open(image, "rb").read()
    for out in (image, os.path.join(queries, "new.csv")):  # a query image it reads; inside the query folder
        assert search.main(["--bundle", bundle, "--images", queries, "--out", out]) == 2
        assert "input" in capsys.readouterr().err
    assert search.main(["--bundle", bundle, "--images", image, "--out", image]) == 2
    assert open(image, "rb").read() == before and sorted(os.listdir(queries)) == ["0.png", "1.png", "2.png"]
    notes = tmp_path / "notes.csv"
    notes.write_text("my,own\n1,2\n")
    assert search.main(["--bundle", bundle, "--images", queries, "--out", str(notes)]) == 2
    assert "is not an earlier search results file" in capsys.readouterr().err
    assert notes.read_text() == "my,own\n1,2\n"
    for out, expected in ((tmp_path, "is a folder"), (tmp_path / "missing" / "r.csv", "does not exist"),
                          (os.path.join(bundle, "r.csv"), "inside the input")):
        assert search.main(["--bundle", bundle, "--images", queries, "--out", str(out)]) == 2
        captured = capsys.readouterr()
        assert expected in captured.err and "Traceback" not in captured.err and captured.out == ""  # before the work
    results = tmp_path / "results.csv"
    assert search.main(["--bundle", bundle, "--images", queries, "--out", str(results)]) == 0
    assert search.main(["--bundle", bundle, "--images", queries, "--out", str(results), "--top_k", "2"]) == 0
    assert len(list(csv.DictReader(open(results)))) == 3 * 2  # an earlier results file is replaced


def test_search_leaves_out_undecodable_image_files_and_refuses_when_none_is_left(bundle, queries, tmp_path, capsys,
                                                                                caplog):
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 10)
    text = tmp_path / "notes.jpg"
    text.write_text("not an image")
    for files in ([broken], [text], [broken, text]):
        assert search.main(["--bundle", bundle, "--images", *map(str, files), "--out", str(tmp_path / "r.csv")]) == 2
        error = capsys.readouterr().err
        assert error.startswith("error: no usable image") and str(files[0]) in error and "Traceback" not in error
    good = os.path.join(queries, "0.png")
    out = tmp_path / "r.csv"
    assert search.main(["--bundle", bundle, "--images", good, str(broken), "--out", str(out), "--top_k", "1"]) == 0
    assert [row["query"] for row in csv.DictReader(open(out))] == [good]
    assert any(str(broken) in record.getMessage() for record in caplog.records if record.levelname == "WARNING")


def test_search_names_a_bad_embeddings_file(bundle, tmp_path, capsys):
    text = tmp_path / "text.npy"
    text.write_text("1 2 3\n")
    truncated = tmp_path / "truncated.npy"
    np.save(truncated, np.ones((4, 8), np.float32))
    truncated.write_bytes(truncated.read_bytes()[:-20])
    objects = tmp_path / "objects.npy"
    np.save(objects, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    for path, expected in ((text, "is not a NumPy .npy file"), (truncated, "is truncated or damaged"),
                           (objects, "Python objects"), (tmp_path / "none.npy", "cannot be read")):
        assert search.main(["--bundle", bundle, "--embeddings", str(path), "--out", str(tmp_path / "r.csv")]) == 2
        error = capsys.readouterr().err
        assert error.startswith(f"error: {path}") and expected in error and "Traceback" not in error
    assert not os.path.exists(tmp_path / "r.csv")

def test_a_truncated_or_foreign_labels_file_of_a_bundle_is_named(bundle, tmp_path, capsys):
    damaged = copy_of(bundle, tmp_path)
    labels = os.path.join(damaged, "index", "labels.npy")
    content = open(labels, "rb").read()
    for written, expected in ((content[:-7], "is truncated or damaged"), (b"cat\ndog\n", "is not a NumPy .npy file")):
        with open(labels, "wb") as handle:
            handle.write(written)
        assert search.main(["--bundle", damaged, "--embeddings", str(tmp_path / "q.npy"),
                            "--out", str(tmp_path / "r.csv")]) == 2
        error = capsys.readouterr().err
        assert error.startswith(f"error: {labels}") and expected in error and "Traceback" not in error


def test_search_refuses_embeddings_whose_distances_overflow(bundle, tmp_path, capsys):
    path = tmp_path / "huge.npy"
    np.save(path, np.full((2, 8), 1e38, np.float32))
    assert search.main(["--bundle", bundle, "--embeddings", str(path), "--out", str(tmp_path / "r.csv")]) == 2
    error = capsys.readouterr().err
    assert "row 0" in error and "overflow" in error and not os.path.exists(tmp_path / "r.csv")


@pytest.fixture(scope="module")
def other_bundle(run, tmp_path_factory):
    """A bundle of another network of the same dimension (freshly initialised) over the same references."""
    import keras

    from model.app import adapter
    from model.app.runs import load_run
    from model.retrieval.bundle import no_threshold, write_bundle
    from model.retrieval.embed import embed_split

    params, source, _, _ = load_run(run)
    keras.utils.set_random_seed(5)
    network = adapter.network(params)
    train = source.splits["train"]
    embeddings = embed_split(network, train, image_size=params.image_size, channels=params.channels, verbose=False)
    out = str(tmp_path_factory.mktemp("other") / "bundle")
    write_bundle(out, network, image_size=params.image_size, channels=params.channels, embeddings=embeddings,
                 labels=np.array(source.class_names)[train.labels], threshold=no_threshold("none"),
                 manifest={"run": "another run", "checkpoint": "best"})
    return out


def search_error(bundle, tmp_path, capsys):
    """search.py's exit status and standard error on `bundle` (embeddings of its dimension as queries)."""
    queries = tmp_path / "q.npy"
    np.save(queries, np.zeros((2, 8), np.float32))
    status = search.main(["--bundle", bundle, "--embeddings", str(queries), "--out", str(tmp_path / "r.csv")])
    return status, capsys.readouterr().err


@pytest.mark.parametrize("part, field", [("index", "fingerprint.bundle"),
                                         ("saved_model", "fingerprint.weights_sha256")])
def test_a_part_copied_from_another_export_is_refused(bundle, other_bundle, tmp_path, capsys, part, field):
    mixed = copy_of(bundle, tmp_path)
    shutil.rmtree(os.path.join(mixed, part))
    shutil.copytree(os.path.join(other_bundle, part), os.path.join(mixed, part))
    status, error = search_error(mixed, tmp_path, capsys)
    assert status == 2 and f"manifest.json: {field} is" in error and "do not belong together" in error
    assert "Traceback" not in error and not os.path.exists(tmp_path / "r.csv")
    assert search_error(other_bundle, tmp_path, capsys)[0] == 0  # each bundle alone is fine


@pytest.mark.parametrize("change, field", [
    ({"embedding_dimension": 9}, "embedding_dimension"),
    ({"index": {"count": 5}}, "index.count"),
    ({"index": {"kind": "hnsw"}}, "index.kind"),
    ({"metric": "cosine"}, "metric"),
    ({"threshold": {"at_target": 0.5}}, "threshold"),
    ({"format_version": 99}, "format_version 99"),
    ({"input": {"channels": 2}}, "input.channels"),
    ({"input": {"image_size": [8]}}, "input.image_size"),
    ({"input": {"image_size": [16, 16]}}, "input.image_size"),  # not the size of the run's params
    ({"input": {"signature": "serve"}}, "input.signature"),
    ({"run": "/elsewhere"}, "fingerprint.bundle"),
    ({"checkpoint": "latest"}, "fingerprint.bundle"),
])
def test_every_checkable_manifest_field_is_checked(bundle, tmp_path, capsys, change, field):
    edited = copy_of(bundle, tmp_path)
    path = os.path.join(edited, "manifest.json")
    manifest = json.load(open(path))
    for key, value in change.items():
        manifest[key] = {**manifest[key], **value} if isinstance(value, dict) else value
    json.dump(manifest, open(path, "w"))
    status, error = search_error(edited, tmp_path, capsys)
    assert status == 2 and error.startswith(f"error: {path}: {field}") and "Traceback" not in error


def test_a_truncated_saved_model_is_an_error_naming_it(bundle, tmp_path, capsys):
    damaged = copy_of(bundle, tmp_path)
    variables = os.path.join(damaged, "saved_model", "variables", "variables.data-00000-of-00001")
    content = open(variables, "rb").read()
    open(variables, "wb").write(content[: len(content) // 2])
    status, error = search_error(damaged, tmp_path, capsys)
    assert status == 2 and error.startswith(f"error: {os.path.join(damaged, 'saved_model')}: the SavedModel cannot")
    assert "export it again" in error and "Traceback" not in error


def test_export_to_a_folder_it_cannot_write_says_so_and_suggests_out(run, tmp_path, monkeypatch, capsys):
    """A read-only run folder (simulated: tests may run as root, who writes whatever the mode)."""
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda path, mode: not str(path).startswith(run) and real_access(path, mode))
    assert export.main(["--model_dir", run, "--out", str(tmp_path / "ro")]) == 0  # elsewhere: fine
    assert export.main(["--model_dir", run]) == 2
    captured = capsys.readouterr()
    assert captured.err.startswith(f"error: cannot write the bundle {os.path.join(run, 'export')} (Permission denied")
    assert "give --out FOLDER" in captured.err and "Traceback" not in captured.err
    monkeypatch.setattr(os, "access", real_access)

    def refused(directory):
        raise PermissionError(13, "Permission denied", os.path.dirname(directory))

    monkeypatch.setattr("model.retrieval.bundle.staging_folder", refused)  # the write itself fails
    assert export.main(["--model_dir", run, "--out", str(tmp_path / "elsewhere")]) == 2
    error = capsys.readouterr().err
    assert f"error: cannot write the bundle {tmp_path / 'elsewhere'} (Permission denied" in error
    assert "Traceback" not in error and not os.path.exists(tmp_path / "elsewhere")


def test_the_reliability_page_names_tests_that_exist():
    """docs/reliability.md: each guarantee names the test that holds it; a renamed or removed test breaks this."""
    import re

    page = open(os.path.join(ROOT, "docs", "reliability.md"), encoding="utf-8").read()
    named = re.findall(r"`(test_\w+\.py)::(test_\w+)`", page)
    assert len(named) > 40
    for module, name in named:
        source = open(os.path.join(ROOT, "tests", module), encoding="utf-8").read()
        assert f"def {name}(" in source, f"{module}::{name}"
