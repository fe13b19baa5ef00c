"""dvc.yaml's code deps cover what each stage runs: every bertrec module its step imports, directly or not.

A stage ``bertrec <stage>`` runs ``bertrec/steps/<stage>.py:run``. An edit to any module in that
step's import closure must rerun the stage, so each module of the closure must be a dep of the
stage, itself or through a folder. Package ``__init__.py`` files are exempt while they hold only a
docstring (they run no code); the CLI is not a dep (it parses and prints, and changes no output).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
STAGES = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]


def module_file(name: str) -> Path | None:
    base = ROOT.joinpath(*name.split("."))
    for candidate in (base / "__init__.py", base.with_suffix(".py")):
        if candidate.exists():
            return candidate
    return None


def imported_names(path: Path, name: str) -> set[str]:
    """Every bertrec module (or module.attribute) that ``path`` imports anywhere, lazy imports included."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*parts, *([node.module] if node.module else [])])
            found |= {base, *(f"{base}.{alias.name}" for alias in node.names)}
    return {n for n in found if n.split(".")[0] == "bertrec"}


def import_closure(module: str) -> set[Path]:
    """The files of ``module`` and of every bertrec module it imports, transitively (packages included)."""
    seen: dict[str, Path] = {}
    todo = [module]
    while todo:
        parts = todo.pop().split(".")
        for i in range(1, len(parts) + 1):
            name = ".".join(parts[:i])
            path = module_file(name)
            if path is not None and name not in seen:
                seen[name] = path
                todo.extend(imported_names(path, name))
    return {path.relative_to(ROOT) for path in seen.values()}


def runs_code(path: Path) -> bool:
    body = ast.parse((ROOT / path).read_text()).body
    return not (
        path.name == "__init__.py" and all(isinstance(n, ast.Expr) and isinstance(n.value, ast.Constant) for n in body)
    )


def uncovered(closure: set[Path], deps: list[str]) -> list[str]:
    """Modules of ``closure`` that run code and that no dep (a file, or a folder above it) covers."""
    roots = [Path(d) for d in deps]
    return sorted(str(p) for p in closure if runs_code(p) and not any(p == r or r in p.parents for r in roots))


@pytest.mark.parametrize("stage", list(STAGES))
def test_each_stage_depends_on_every_module_its_step_imports(stage):
    # Given the stage's command, it runs the step module of the same name
    assert STAGES[stage]["cmd"] == f"bertrec {stage}"
    assert (ROOT / "bertrec" / "steps" / f"{stage}.py").exists()
    # Then every module in the step's import closure is among the stage's deps
    closure = import_closure(f"bertrec.steps.{stage}")
    assert Path(f"bertrec/steps/{stage}.py") in closure and Path("bertrec/config.py") in closure
    missing = uncovered(closure, STAGES[stage]["deps"])
    assert missing == [], f"dvc.yaml stage {stage!r} lacks deps {missing}: an edit there would not rerun it"


def test_the_check_fails_when_a_dep_is_removed():
    # Given the train stage's deps without the module that holds its losses
    deps = [d for d in STAGES["train"]["deps"] if d != "bertrec/model/losses.py"]
    assert len(deps) == len(STAGES["train"]["deps"]) - 1
    # Then the check names exactly that module
    assert uncovered(import_closure("bertrec.steps.train"), deps) == ["bertrec/model/losses.py"]
    # and a folder dep covers every module below it
    assert uncovered(import_closure("bertrec.steps.train"), [*deps, "bertrec/model"]) == []


def test_the_closure_follows_lazy_imports_and_packages():
    closure = import_closure("bertrec.steps.drift")
    # monitor.py imports the recsys comparison inside a function; the package __init__ files come along
    assert Path("bertrec/mlops/drift/recsys.py") in closure
    assert Path("bertrec/mlops/drift/__init__.py") in closure and not runs_code(Path("bertrec/mlops/drift/__init__.py"))
    # the CLI is not part of any step
    assert all(
        not str(p).startswith("bertrec/cli") for stage in STAGES for p in import_closure(f"bertrec.steps.{stage}")
    )
