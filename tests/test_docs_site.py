"""The documentation site's sources are complete: the API reference names every public
class and function, every guide is reachable from the index, and every example can be
a gallery page. (``make docs`` / ``make docs-fast`` build the site itself, with warnings
as errors; CI runs the fast build.)"""

from __future__ import annotations

import ast
import importlib
import re

import pytest

from .conftest import REPO

DOCS = REPO / "docs"
PUBLIC_MODULES = ["sessionrec", "sessionrec.models", "sessionrec.preprocessing",
                  "sessionrec.model_selection", "sessionrec.metrics", "sessionrec.evaluation",
                  "sessionrec.plotting", "sessionrec.datasets", "sessionrec.serving",
                  "sessionrec.callbacks", "sessionrec.exceptions", "sessionrec.cli"]
# Constants, not pages: the version, and the tie modes (documented in their modules).
NOT_PAGES = {"__version__", "TIE_MODES"}


def _api_entries() -> dict[str, set[str]]:
    """currentmodule -> the names autosummary lists under it in docs/api.rst."""
    entries: dict[str, set[str]] = {}
    module = None
    in_summary = False
    for line in (DOCS / "api.rst").read_text().splitlines():
        if match := re.match(r"\.\. currentmodule:: (\S+)", line):
            module = match.group(1)
        elif line.startswith(".. autosummary::"):
            in_summary = True
        elif in_summary and re.match(r"^   [A-Za-z_]\w*$", line):
            entries.setdefault(module, set()).add(line.strip())
        elif line and not line.startswith(" "):
            in_summary = False
    return entries


def test_every_public_module_is_a_submodule_the_api_page_documents():
    text = (DOCS / "api.rst").read_text()
    for name in PUBLIC_MODULES:
        assert f".. automodule:: {name}\n" in text, name
    # A new public submodule (a package folder or module without a leading underscore)
    # must be added to the list above, hence to the API page.
    found = {f"sessionrec.{p.stem}" for p in (REPO / "sessionrec").iterdir()
             if not p.name.startswith("_") and (p.suffix == ".py" or (p / "__init__.py").exists())}
    assert found - {"sessionrec.nn"} <= set(PUBLIC_MODULES), found - set(PUBLIC_MODULES)


@pytest.mark.parametrize("module", PUBLIC_MODULES)
def test_every_public_name_has_an_api_page(module):
    documented = {name for names in _api_entries().values() for name in names}
    public = set(importlib.import_module(module).__all__) - NOT_PAGES
    missing = sorted(public - documented)
    assert not missing, f"{module}: not in docs/api.rst: {missing}"


def test_api_entries_exist():
    for module, names in _api_entries().items():
        imported = importlib.import_module(module)
        for name in names:
            assert hasattr(imported, name), f"docs/api.rst lists {module}.{name}"


def test_every_guide_is_in_the_index():
    index = (DOCS / "index.md").read_text()
    toctrees = "\n".join(re.findall(r"```\{toctree\}(.*?)```", index, re.DOTALL))
    listed = {line.strip() for line in toctrees.splitlines()
              if line.strip() and not line.strip().startswith(":")}
    guides = {p.stem for p in DOCS.glob("*.md")} - {"index"}
    assert guides <= listed, f"not in a toctree of docs/index.md: {guides - listed}"
    for name in listed - {"auto_examples/index", "api"}:
        assert (DOCS / f"{name}.md").exists(), name


@pytest.mark.parametrize("path", sorted((REPO / "examples").glob("[!_]*.py")),
                         ids=lambda p: p.stem)
def test_examples_are_gallery_pages(path):
    """sphinx-gallery takes the title from the first lines of the docstring, underlined."""
    docstring = ast.get_docstring(ast.parse(path.read_text()), clean=False)
    assert docstring, f"{path.name} has no docstring"
    title, underline = docstring.strip().splitlines()[:2]
    assert re.fullmatch(r"=+", underline) and len(underline) >= len(title), path.name
