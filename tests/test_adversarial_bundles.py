"""Adversarial tests of bundles: what a hostile tester did to export.py, search.py and the bundles they share,
each of which once lost data, went silently wrong or ended in a traceback (docs/reliability.md lists them).
One digits run is trained and exported once for the module; each test copies what it damages."""

import os
import shutil

import pytest

import export
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
