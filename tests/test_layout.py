"""The house's floors (../shared/STYLE.md): imports point down, never up; a task never
imports another task or the evaluator's harness; no import hides inside a function.

Regression test for issue 19: the harness and the tasks imported each other through
function-local imports, and two tasks imported the sequence task's helpers.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# Module prefix -> floor; the longest matching prefix wins. The metrics and baselines of
# the evaluator sit below the tasks (they import nothing above the shared helpers), so
# tasks may use them; its harness sits above.
FLOORS = {
    "interest.schemas": 1, "interest.config": 1, "interest.io": 1,
    "interest.data": 2, "interest.text": 2,
    "interest.common": 3, "interest.evaluate.metrics": 3, "interest.evaluate.baselines": 3,
    "interest.evaluate.published": 3,
    "interest.tasks": 4,
    "interest.train": 5, "interest.tune": 5, "interest.score": 5, "interest.evaluate": 5, "interest.report": 5,
    "interest.pipeline": 6, "interest.report.build": 6,  # the report reads the warehouse's manifests
    "interest.cli": 7, "ray_jobs": 7,
}


def floor(module: str) -> int:
    matches = [p for p in FLOORS if module == p or module.startswith(p + ".")]
    assert matches, f"{module} has no floor in tests/test_layout.py: give it one"
    return FLOORS[max(matches, key=len)]


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path) -> list[tuple[str, int, bool]]:
    """(imported interest/ray_jobs module, line, inside a function) of a source file."""
    tree = ast.parse(path.read_text())
    found = []

    def visit(node, in_function: bool):
        for child in ast.iter_child_nodes(node):
            inner = in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            if isinstance(child, ast.Import):
                found.extend((a.name, child.lineno, in_function) for a in child.names)
            elif isinstance(child, ast.ImportFrom) and child.module and child.level == 0:
                for a in child.names:  # `from interest import io` imports the module interest.io
                    sub = f"{child.module}.{a.name}"
                    is_module = (ROOT / Path(*sub.split("."))).with_suffix(".py").exists() or \
                        (ROOT / Path(*sub.split("."))).is_dir()
                    found.append((sub if is_module else child.module, child.lineno, in_function))
            visit(child, inner)

    visit(tree, False)
    return [(m, line, f) for m, line, f in found if m.split(".")[0] in ("interest", "ray_jobs")]


def sources():
    return sorted((ROOT / "interest").rglob("*.py")) + sorted((ROOT / "ray_jobs").rglob("*.py"))


def test_imports_point_down():
    upward = []
    for path in sources():
        me = module_name(path)
        for target, line, _ in imports(path):
            if target != "interest" and floor(target) > floor(me):
                upward.append(f"{me}:{line} (floor {floor(me)}) imports {target} (floor {floor(target)})")
    assert not upward, "\n".join(upward)


def test_tasks_import_no_other_task_and_not_the_harness():
    found = []
    for path in sorted((ROOT / "interest" / "tasks").rglob("*.py")):
        me = module_name(path)
        if me == "interest.tasks":  # the registry: it lists every task
            continue
        parts = me.split(".")
        own = parts[2] if len(parts) > 3 else None  # interest.tasks.<task>.<module>
        for target, line, _ in imports(path):
            t = target.split(".")
            if t[:2] == ["interest", "tasks"] and len(t) > 3 and t[2] != own:
                found.append(f"{me}:{line} imports task module {target}")
            if target == "interest.tasks":
                found.append(f"{me}:{line} imports the task registry")
            if target.startswith("interest.evaluate.harness"):
                found.append(f"{me}:{line} imports the evaluator's harness")
    assert not found, "\n".join(found)


def test_no_import_of_the_package_hides_in_a_function():
    hidden = [f"{module_name(p)}:{line} imports {t} inside a function"
              for p in sorted((ROOT / "interest").rglob("*.py")) for t, line, inside in imports(p) if inside]
    assert not hidden, "\n".join(hidden)


def test_the_checker_sees_an_upward_import(tmp_path):
    """The checks above can fail: a planted module of floor 4 importing floor 5."""
    planted = ROOT / "interest" / "tasks" / "_planted_for_test.py"
    planted.write_text("def f():\n    from interest.evaluate.harness import evaluate\n")
    try:
        found = imports(planted)
        assert found == [("interest.evaluate.harness", 2, True)]
        assert floor(found[0][0]) > floor(module_name(planted))
    finally:
        planted.unlink()
