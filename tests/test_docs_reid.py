"""docs/guides/reid-strong-baseline.md: every python block runs as it is from the repository root, except those
marked `<!-- illustrative -->` on the line before their fence (a GPU run, a dataset this machine lacks), and
every shell block is so marked."""

import contextlib
import io
import os
import re

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PAGE = os.path.join(ROOT, "docs", "guides", "reid-strong-baseline.md")


def blocks():
    """[(language, code, illustrative)] of the page's fenced blocks, in order."""
    text = open(PAGE, encoding="utf-8").read()
    found, position = [], 0
    for match in re.finditer(r"```(\w*)\n(.*?)\n```", text, re.S):
        if match.start() < position:
            continue
        before = text[:match.start()].rstrip("\n").rsplit("\n", 1)[-1]
        found.append((match.group(1), match.group(2), before.strip() == "<!-- illustrative -->"))
        position = match.end()
    return found


def test_the_page_has_runnable_blocks_and_marks_the_others():
    found = blocks()
    assert len([block for block in found if block[0] == "python" and not block[2]]) >= 4
    for language, code, illustrative in found:
        assert language != "bash" or illustrative, f"a shell block that is not marked illustrative: {code[:60]}"


@pytest.mark.parametrize("code", [code for language, code, illustrative in blocks()
                                  if language == "python" and not illustrative],
                         ids=lambda code: code.splitlines()[-1][:40])
def test_each_python_block_runs_from_the_repository_root(code, monkeypatch):
    monkeypatch.chdir(ROOT)
    output = io.StringIO()
    with contextlib.redirect_stdout(output):
        exec(compile(code, PAGE, "exec"), {"__name__": "__docs__"})  # noqa: S102 (the page's own code)
    assert output.getvalue().strip()  # each block prints what it shows
