"""The code the README and docs/ show runs as shown.

Each Markdown file's ``python`` blocks run in order in one namespace (a later block may use
an earlier one's names), in a fresh working folder that has ``../shared/data`` beside it,
as a new user's clone does. The shell commands (``make demo``, ``make test``) are what
``.ci/run`` runs.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from .conftest import REPO, SHARED_DATA

DOCUMENTS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
_BLOCK = re.compile(r"^```python\n(.*?)^```", re.MULTILINE | re.DOTALL)


def python_blocks(path) -> list[str]:
    return _BLOCK.findall(path.read_text())


def test_the_readme_shows_code():
    assert len(python_blocks(REPO / "README.md")) >= 2


@pytest.mark.slow
@pytest.mark.parametrize("path", [d for d in DOCUMENTS if python_blocks(d)],
                         ids=lambda p: p.name)
def test_code_blocks_run(path, tmp_path, monkeypatch):
    blocks = python_blocks(path)
    if any("../shared/data" in block for block in blocks) and not SHARED_DATA.is_dir():
        pytest.skip(f"{path.name} reads ../shared/data, not found at {SHARED_DATA}")
    work = tmp_path / "checkout"
    work.mkdir()
    (tmp_path / "shared").mkdir()
    (tmp_path / "shared" / "data").symlink_to(SHARED_DATA.resolve())
    monkeypatch.chdir(work)
    namespace: dict = {"__name__": "__main__"}
    for number, block in enumerate(blocks, start=1):
        code = compile(block, f"{path.name}, python block {number}", "exec")
        exec(code, namespace)  # noqa: S102 - the documentation's own code


@pytest.mark.skipif(sys.version_info < (3, 11), reason="python -P is new in 3.11")
def test_the_readme_remedy_for_a_checkout_in_the_working_folder(tmp_path):
    """Python run from a folder that holds a checkout named ``sessionrec`` takes that
    folder for an empty namespace package (the README's Development section); ``python
    -P`` (or ``PYTHONSAFEPATH=1``), the remedy the README gives, imports the package."""
    (tmp_path / "sessionrec").symlink_to(REPO, target_is_directory=True)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONSAFEPATH")}
    done = subprocess.run(
        [sys.executable, "-P", "-c", "import sessionrec; from sessionrec import "
         "GRU4RecRecommender; print(sessionrec.__file__)"],
        cwd=tmp_path, capture_output=True, text=True, env=env)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().endswith("__init__.py")
