"""The package's structure, read from its imports (README, "Layout"): layers import only downward,
stages never import each other, no cycles, project imports at the top of modules."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from pipelines.config import PROJECT_ROOT
from pipelines.runs.manifest import STAGES

PACKAGE = PROJECT_ROOT / "pipelines"
# bottom to top; a unit may import itself and any unit of a lower layer
LAYERS = [
    ["pipelines.errors"],
    ["pipelines.llmc", "pipelines.files", "pipelines.onednn"],
    ["pipelines.config"],
    ["pipelines.data", "pipelines.engines", "pipelines.model", "pipelines.classifier"],
    ["pipelines.runs"],
    ["pipelines.ingest", "pipelines.synthetic", "pipelines.annotate", "pipelines.classify", "pipelines.filter",
     "pipelines.mix", "pipelines.train", "pipelines.evaluate", "pipelines.figures"],
    ["pipelines.cli", "pipelines.sweep", "pipelines.notebooks", "pipelines.mixsearch"],
]
STAGE_LAYER = 5
LAYER = {unit: i for i, units in enumerate(LAYERS) for unit in units}


def module_name(path: Path) -> str:
    parts = path.relative_to(PROJECT_ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def unit_of(module: str) -> str:
    parts = module.split(".")
    for k in range(len(parts), 0, -1):
        if ".".join(parts[:k]) in LAYER:
            return ".".join(parts[:k])
    raise AssertionError(f"{module} belongs to no layer: add it to LAYERS (and the README's layout)")


def project_imports() -> dict[str, list[tuple[str, int, bool]]]:
    """module -> [(imported module, line, at top level)]"""
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        tree = ast.parse(path.read_text())
        found = []
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("pipelines"):
                targets = [node.module]
                if node.module == "pipelines":  # from pipelines import x: x is a module
                    targets = [f"pipelines.{a.name}" for a in node.names]
            elif isinstance(node, ast.Import):
                targets = [a.name for a in node.names if a.name.startswith("pipelines")]
            else:
                continue
            found += [(t, node.lineno, node.col_offset == 0) for t in targets]
        out[module_name(path)] = found
    return out


IMPORTS = project_imports()


def test_every_module_has_a_layer_and_every_stage_a_package():
    for module in IMPORTS:
        if module != "pipelines":
            unit_of(module)
    for stage, spec in STAGES.items():
        runner = spec.runner.split(":")[0]
        assert LAYER[unit_of(runner)] == STAGE_LAYER, f"stage {stage} runs {runner}, outside the stage packages"
        assert runner.split(".")[-1] == stage, f"stage {stage}: its module should be named after it ({runner})"


@pytest.mark.parametrize("module", sorted(m for m in IMPORTS if m != "pipelines"))
def test_imports_go_down_and_stages_do_not_import_each_other(module):
    mine = unit_of(module)
    for target, line, top in IMPORTS[module]:
        theirs = unit_of(target)
        if theirs == mine:
            continue
        where = f"{module}:{line} imports {target}"
        if LAYER[mine] == STAGE_LAYER:
            assert LAYER[theirs] < STAGE_LAYER, f"{where}: a stage imports another stage or a layer above"
        else:
            assert LAYER[theirs] <= LAYER[mine], f"{where}: an import from a higher layer"
        assert top, f"{where} inside a function: project imports go at the top of the module"


def test_no_import_cycle_between_modules():
    graph = {m: {t for t, _, _ in targets if t in IMPORTS} for m, targets in IMPORTS.items()}
    state: dict[str, int] = {}  # 1 visiting, 2 done

    def visit(m: str, path: list[str]) -> None:
        state[m] = 1
        for n in sorted(graph[m]):
            if state.get(n) == 1:
                raise AssertionError("import cycle: " + " -> ".join(path[path.index(n):] + [n]))
            if n not in state:
                visit(n, path + [n])
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m, [m])


def test_the_layer_table_in_the_package_docstring_names_every_unit():
    import pipelines

    for unit in LAYER:
        assert unit.split(".", 1)[1] in pipelines.__doc__, f"pipelines/__init__.py does not mention {unit}"
