"""The package's shape, checked on its source: no import cycle, the core never imports its
extensions (SE-Diff) or the command line, all argument parsing in the CLI package, no file over
600 lines. Imports are read with `ast` (function-level ones included), so nothing is executed."""

from __future__ import annotations

import ast
import configparser
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
#: Source folder -> the package it installs as (setup.cfg `package_dir`).
PACKAGES = {
    "diffusets_jax": "diffusets_jax",
    "data_pipelines": "diffusets_jax.data_pipelines",
    "configs": "diffusets_jax.configs",
}
EXTENSIONS = ("diffusets_jax.sediff", "diffusets_jax.cli")
MAX_LINES = 600


def _modules() -> dict[str, Path]:
    modules = {}
    for folder, package in PACKAGES.items():
        for path in sorted((ROOT / folder).rglob("*.py")):
            parts = (package, *path.relative_to(ROOT / folder).with_suffix("").parts)
            modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return modules


def _resolve(name: str, modules) -> str | None:
    """The module of ours that `import name` loads (its longest known prefix), or None."""
    while name and name not in modules:
        name = name.rpartition(".")[0]
    return name or None


def import_graph(modules: dict[str, Path]) -> dict[str, set[str]]:
    """`{module: modules of ours it imports}`, at any level of the file."""
    graph = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        targets = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets.update(_resolve(alias.name, modules) for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join(anchor + ([base] if base else []))
                for alias in node.names:  # `from pkg import module` imports pkg.module
                    full = f"{base}.{alias.name}"
                    targets.add(_resolve(full, modules) if full in modules else _resolve(base, modules))
        graph[name] = {t for t in targets if t and t != name}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan), each sorted."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


@pytest.fixture(scope="module")
def graph():
    return import_graph(_modules())


def test_the_cycle_check_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycle(graph):
    assert cycles(graph) == []


def test_the_core_imports_no_extension(graph):
    core = {m: targets for m, targets in graph.items() if not m.startswith(EXTENSIONS)}
    offending = sorted((m, t) for m, targets in core.items() for t in targets if t.startswith(EXTENSIONS))
    assert offending == []
    assert graph["diffusets_jax.sediff.physics"] & {"diffusets_jax.training.diffusion"}  # the check sees imports


def test_argument_parsing_lives_in_the_cli_package():
    parsers = sorted(
        name
        for name, path in _modules().items()
        if not name.startswith("diffusets_jax.cli")
        and "argparse"
        in {
            alias.name
            for node in ast.walk(ast.parse(path.read_text()))
            if isinstance(node, ast.Import)
            for alias in node.names
        }
    )
    assert parsers == []


def test_setup_cfg_lists_every_package_under_one_name():
    config = configparser.ConfigParser()
    config.read(ROOT / "setup.cfg")
    listed = set(config["options"]["packages"].split())
    packages = {name for name, path in _modules().items() if path.name == "__init__.py"}
    assert listed == packages
    assert {name.split(".")[0] for name in listed} == {"diffusets_jax"}  # no top-level `configs` or `data_pipelines`
    mapping = dict(line.split(" = ") for line in config["options"]["package_dir"].strip().splitlines())
    assert mapping == {package: folder for folder, package in PACKAGES.items() if folder != package}


def test_no_source_file_over_600_lines():
    lengths = {name: len(path.read_text().splitlines()) for name, path in _modules().items()}
    assert {name: n for name, n in lengths.items() if n > MAX_LINES} == {}
    assert max(lengths.values()) > 100  # the files were read
