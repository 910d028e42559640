"""The code's shape: dependencies point one way (pipelines -> dice_core), with no import cycle,
and the command line reports only the project's own errors in one line."""
import ast
from pathlib import Path

import pytest

PROJECT = Path(__file__).resolve().parents[1]


def module_name(path: Path) -> str:
    parts = path.relative_to(PROJECT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(path: Path, modules: set[str]) -> set[str]:
    """The project modules ``path`` imports, at its top or inside functions."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in (node for top in ast.parse(path.read_text()).body if not is_main_block(top)
                 for node in ast.walk(top)):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[:len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([node.module] if node.module else []))
            found |= {base} | {f"{base}.{alias.name}" for alias in node.names}
    return {module for module in found if module in modules and module != name}


def is_main_block(node: ast.stmt) -> bool:
    """``if __name__ == "__main__":``, which runs only as a script, never on import."""
    return (isinstance(node, ast.If) and isinstance(node.test, ast.Compare)
            and isinstance(node.test.left, ast.Name) and node.test.left.id == "__name__")


def import_graph() -> dict[str, set[str]]:
    """Every import between the project's modules, with the ones `dice` makes by name."""
    from pipelines.cli import COMMANDS, STAGES
    paths = [p for root in ("dice_core", "pipelines") for p in (PROJECT / root).rglob("*.py")]
    modules = {module_name(p) for p in paths}
    graph = {module_name(p): imported_modules(p, modules) for p in paths}
    graph["pipelines.cli"] |= {f"pipelines.{name}" for name, _ in STAGES} | \
        {f"pipelines.{module}" for module, _, _ in COMMANDS}
    return graph


def cycle_from(graph: dict[str, set[str]], start: str) -> list[str] | None:
    """An import path from ``start`` back to itself, or None."""
    stack, seen = [(start, [start])], set()
    while stack:
        node, path = stack.pop()
        for target in graph.get(node, ()):
            if target == start:
                return path + [start]
            if target not in seen:
                seen.add(target)
                stack.append((target, path + [target]))
    return None


def test_no_module_of_dice_core_imports_pipelines():
    graph = import_graph()
    back = sorted(f"{module} -> {target}" for module, targets in graph.items()
                  if module.startswith("dice_core") for target in targets
                  if target.startswith("pipelines"))
    assert back == []


def test_no_import_cycle():
    graph = import_graph()
    cycles = [cycle for module in sorted(graph) if (cycle := cycle_from(graph, module))]
    assert cycles == []


def test_the_cli_reports_the_projects_errors_in_one_line_and_lets_bugs_through(monkeypatch,
                                                                               capsys):
    import pipelines.static
    from dice_core.errors import InputError
    from pipelines.cli import main as dice_main

    monkeypatch.setattr(pipelines.static, "run", lambda args: (_ for _ in ()).throw(
        InputError("the input cannot work: fix it")))
    assert dice_main(["static", "--models", "dit-t"]) == 2
    assert capsys.readouterr().err == "error: the input cannot work: fix it\n"
    monkeypatch.setattr(pipelines.static, "run", lambda args: (_ for _ in ()).throw(
        ValueError("a bug")))
    with pytest.raises(ValueError, match="a bug"):       # a traceback, not a one-liner
        dice_main(["static", "--models", "dit-t"])


def test_dice_static_validates_its_flags_like_every_stage(capsys):
    from pipelines.cli import main as dice_main
    assert dice_main(["static", "--models", "dit-t", "--batch-size", "0",
                      "--no-throughput"]) == 2
    assert "--batch-size: Input should be greater than or equal to 1" in capsys.readouterr().err
