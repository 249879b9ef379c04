"""The documentation is true: every code block of README.md, docs/ and benchmarks/README.md runs, and the
generated pages are those the code generates now.

How a page's blocks run (the rules the pages are written to):
- in document order, in a scratch copy of the repository (model/, the five scripts, experiments/*/params.json),
  so relative paths such as experiments/digits work and what a block writes is thrown away;
- ```python blocks of one page share one namespace, in this process (Keras on TensorFlow, seeded), with the
  scratch copy as the working directory;
- ```bash blocks run with `bash -euo pipefail`, `python` being this interpreter;
- ```json blocks must parse, and one right after `<!-- params.json -->` must be a valid params.json;
- other fences (text, console output, diff, yaml) are not run;
- a block right after the line `<!-- illustrative -->` is not run: it needs a GPU, a download, a dataset
  this machine lacks, or minutes.
"""

import contextlib
import glob
import json
import os
import re
import shutil
import subprocess
import sys

import keras
import pytest

from model.params import Params

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPTS = ("train.py", "evaluate.py", "export.py", "search.py", "visualize_embeddings.py")
ILLUSTRATIVE = "<!-- illustrative -->"
PARAMS = "<!-- params.json -->"
FENCE = re.compile(r"^(?P<indent> *)```(?P<lang>[\w+-]*)[^\n]*\n(?P<code>.*?)^(?P=indent)```\s*$", re.M | re.S)
RUN = {"python", "bash", "json"}


def pages():
    found = [os.path.join(ROOT, "README.md"), os.path.join(ROOT, "benchmarks", "README.md")]
    found += sorted(glob.glob(os.path.join(ROOT, "docs", "**", "*.md"), recursive=True))
    return [os.path.relpath(path, ROOT) for path in found if os.path.exists(path)]


def blocks(text):
    """(language, code, mark, line) of every fenced block; `mark` is the line just above the fence."""
    found = []
    for match in FENCE.finditer(text):
        before = text[:match.start()].rstrip("\n").rsplit("\n", 1)[-1].strip()
        code = "\n".join(line[len(match["indent"]):] for line in match["code"].splitlines())
        found.append((match["lang"], code, before, text[:match.start()].count("\n") + 1))
    return found


def scratch_copy(destination):
    """The parts of the repository the snippets may use, copied into `destination`."""
    shutil.copytree(os.path.join(ROOT, "model"), os.path.join(destination, "model"),
                    ignore=shutil.ignore_patterns("__pycache__"))
    for script in SCRIPTS:
        shutil.copy(os.path.join(ROOT, script), destination)
    for params in glob.glob(os.path.join(ROOT, "experiments", "*", "params.json")):
        target = os.path.join(destination, os.path.relpath(params, ROOT))
        os.makedirs(os.path.dirname(target), exist_ok=True)
        shutil.copy(params, target)


def run_page(page, scratch):
    """Run the blocks of `page` as the module docstring says; an AssertionError names the failing block."""
    with open(os.path.join(ROOT, page), encoding="utf-8") as handle:
        text = handle.read()
    namespace = {"__name__": "__main__"}
    environment = {**os.environ, "PATH": os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"],
                   "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONPATH": scratch}
    keras.utils.set_random_seed(0)
    for language, code, mark, line in blocks(text):
        if language not in RUN or mark == ILLUSTRATIVE:
            continue
        where = f"{page}:{line} ({language} block)"
        if language == "json":
            try:
                values = json.loads(code)
            except json.JSONDecodeError as error:
                raise AssertionError(f"{where} is not JSON: {error}") from None
            if mark == PARAMS:
                try:
                    Params.from_dict(values, source=where)
                except ValueError as error:
                    raise AssertionError(str(error)) from None
        elif language == "bash":
            finished = subprocess.run(["bash", "-euo", "pipefail", "-c", code], cwd=scratch, env=environment,
                                      capture_output=True, text=True, timeout=600)
            assert finished.returncode == 0, f"{where} failed:\n{finished.stdout[-2000:]}\n{finished.stderr[-3000:]}"
        else:
            try:
                exec(compile(code, where, "exec"), namespace)  # noqa: S102 (the documentation's own code)
            except Exception as error:
                raise AssertionError(f"{where} failed: {type(error).__name__}: {error}") from error


@contextlib.contextmanager
def working_directory(path):
    """The python blocks run with this working directory (relative paths), against this checkout's library."""
    previous = os.getcwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(previous)


@pytest.mark.parametrize("page", pages())
def test_every_code_block_of_the_page_runs(page, tmp_path):
    scratch = str(tmp_path / "repository")
    scratch_copy(scratch)
    with working_directory(scratch):
        run_page(page, scratch)


def test_a_broken_block_fails(tmp_path):
    """The runner is not a formality: a block that raises, a failing command, or bad JSON fails the page."""
    scratch = str(tmp_path / "repository")
    scratch_copy(scratch)
    docs = tmp_path / "docs"
    docs.mkdir()
    cases = {
        "python": "```python\nfrom model.losses import get_loss\nget_loss('batch_al')\n```\n",
        "bash": "```bash\npython train.py --model_dir experiments/does_not_exist\n```\n",
        "json": '<!-- params.json -->\n```json\n{"learning_rat": 0.1}\n```\n',
    }
    for language, text in cases.items():
        page = docs / f"{language}.md"
        page.write_text(f"# A page\n\n{text}")
        with working_directory(scratch), pytest.raises(AssertionError, match=rf"{language}\.md:\d+"):
            run_page(str(page), scratch)
    skipped = docs / "skipped.md"
    skipped.write_text(f"{ILLUSTRATIVE}\n```python\nraise SystemExit('never run')\n```\n")
    with working_directory(scratch):
        run_page(str(skipped), scratch)


def test_the_generated_pages_are_current():
    """docs/generate.py --check: the params and command-line references, the losses table and the API pages."""
    finished = subprocess.run([sys.executable, os.path.join(ROOT, "docs", "generate.py"), "--check"], cwd=ROOT,
                              capture_output=True, text=True, timeout=300)
    assert finished.returncode == 0, finished.stderr[-2000:]


def test_the_readme_is_a_short_guide():
    with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as handle:
        lines = handle.read().splitlines()
    assert len(lines) <= 320
