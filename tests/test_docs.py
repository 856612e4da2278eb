"""The docs parse as reStructuredText, and their links to files lead somewhere.

GitHub and Sphinx render README.rst and docs/*.rst; a malformed table or
a link to a moved chapter shows as broken text to every reader.
"""

from __future__ import annotations

import io
import re
from pathlib import Path

import docutils.core
import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = sorted([ROOT / "README.rst", *(ROOT / "docs").glob("*.rst")])
#: Sphinx's own directive, unknown to plain docutils
SPHINX_ONLY = re.compile(r'Unknown directive type "toctree"|\.\. toctree::|:maxdepth:|^\s+\w+$')


@pytest.mark.parametrize("path", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_the_document_parses_without_warnings(path: Path) -> None:
    warnings = io.StringIO()
    docutils.core.publish_doctree(
        path.read_text(encoding="utf-8"),
        source_path=str(path),
        settings_overrides={"report_level": 2, "halt_level": 5, "warning_stream": warnings},
    )
    problems = [line for line in warnings.getvalue().splitlines() if line.strip() and not SPHINX_ONLY.search(line)]
    assert problems == []


@pytest.mark.parametrize("path", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_links_to_files_of_the_project_exist(path: Path) -> None:
    text = path.read_text(encoding="utf-8")
    targets = re.findall(r"`[^`<]*<([^>`:]+)>`_", text) + re.findall(r"^\.\. image:: (\S+)", text, re.M)
    missing = [t for t in targets if not (path.parent / t.split("#")[0]).exists()]
    assert missing == []
