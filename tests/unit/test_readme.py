"""The README's promises that the suite keeps: every refusal it lists is a test that exists."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def section(title: str) -> str:
    text = (ROOT / "README.md").read_text()
    start = text.index(f"## {title}\n")
    end = text.find("\n## ", start + 1)
    return text[start : end if end > 0 else None]


def test_every_refusal_in_the_readme_names_a_test_that_exists():
    rows = [line for line in section("What bertrec refuses, and how").splitlines() if line.startswith("| ")][2:]
    assert len(rows) >= 20
    kinds = {row.split("|")[1].strip() for row in rows}
    assert kinds == {"data file", "params", "CLI", "API", "registry"}
    for row in rows:
        reference = re.fullmatch(r"`(tests/[\w/]+\.py)::(test_\w+)`", row.rstrip(" |").rsplit("|", 1)[1].strip())
        assert reference, f"no test named in: {row}"
        path, name = reference.groups()
        tree = ast.parse((ROOT / path).read_text())
        assert name in {node.name for node in tree.body if isinstance(node, ast.FunctionDef)}, f"{path}::{name}"
