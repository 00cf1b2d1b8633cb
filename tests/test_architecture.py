"""The design holds: the engine touch-point list equals what sodet's subclasses override; no code outside the
family modules branches on a family name; the registry imports no family; a family added as one module
(tests/toy_family.py) trains, validates and distils through every layer with sodet's methods."""

from __future__ import annotations

import ast
import importlib
import json
import re

import pytest
from conftest import MINI, REPO

PACKAGE = REPO / "sodet"
FAMILY_MODULES = {"models/yolox.py", "models/yolo.py", "models/gfl.py"}


def engine_overrides(cls, base) -> set[str]:
    """Methods ``cls`` defines itself that the engine's ``base`` (or an engine ancestor of it) defines too."""
    out = set()
    for name, value in vars(cls).items():
        if not (callable(value) or isinstance(value, property)) or name == "__init__":
            continue
        owner = next((c for c in base.__mro__ if name in vars(c)), None)
        if owner is not None and owner.__module__.startswith("ultralytics"):
            out.add(name)
    return out


def load(path: str):
    module, _, name = path.rpartition(".")
    return getattr(importlib.import_module(module), name)


def test_the_engine_touch_point_list_is_what_the_subclasses_override():
    from sodet.engine import OVERRIDES

    for cls_path, (base_path, declared) in OVERRIDES.items():
        cls, base = load(cls_path), load(base_path)
        assert issubclass(cls, base), cls_path
        assert engine_overrides(cls, base) == set(declared), cls_path
    docstring = importlib.import_module("sodet.engine").__doc__
    for _, (_, declared) in OVERRIDES.items():
        assert all(f"``{name}``" in docstring for name in declared)  # the prose names each of them


def string_constants(tree: ast.AST) -> list[tuple[int, str]]:
    return [(n.lineno, n.value) for n in ast.walk(tree) if isinstance(n, ast.Constant) and isinstance(n.value, str)]


def test_no_code_outside_the_family_modules_names_a_family():
    from sodet.models.registry import families

    names = set(families())
    found = []
    for path in PACKAGE.rglob("*.py"):
        rel = path.relative_to(PACKAGE).as_posix()
        if rel in FAMILY_MODULES:
            continue
        for line, value in string_constants(ast.parse(path.read_text())):
            if value in names:
                found.append(f"{rel}:{line} {value!r}")
    assert found == []


def test_the_registry_imports_no_family_and_there_are_no_import_circles():
    tree = ast.parse((PACKAGE / "models" / "registry.py").read_text())
    imported = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)} | {
        a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    assert not any(m and re.match(r"sodet\.models\.(yolox|yolo|gfl)$", m) for m in imported)
    # the package's modules import each other without a circle (module-level and function-level imports)
    graph = {}
    for path in PACKAGE.rglob("*.py"):
        mod = "sodet." + path.relative_to(PACKAGE).with_suffix("").as_posix().replace("/", ".").removesuffix(".__init__")
        deps = set()
        for n in ast.walk(ast.parse(path.read_text())):
            if isinstance(n, ast.ImportFrom) and n.module and n.module.startswith("sodet"):
                deps.add(n.module)
                deps.update(f"{n.module}.{a.name}" for a in n.names)
            elif isinstance(n, ast.Import):
                deps.update(a.name for a in n.names if a.name.startswith("sodet"))
        graph[mod] = deps
    modules = set(graph)
    graph = {m: {d for d in deps if d in modules and d != m and not m.startswith(d + ".")} for m, deps in graph.items()}
    state: dict[str, int] = {}

    def visit(m, stack):
        state[m] = 1
        for d in graph[m]:
            if state.get(d) == 1:
                raise AssertionError("import circle: " + " -> ".join(stack[stack.index(d):] + [d]) if d in stack else d)
            if not state.get(d):
                visit(d, stack + [d])
        state[m] = 2

    for m in sorted(modules):
        if not state.get(m):
            visit(m, [m])


def test_a_family_added_as_one_module_runs_every_method(cli, tmp_path):
    """tests/toy_family.py registers a family and one model: the CLI trains it with the weighted loss and copy-paste,
    validates it, and distils it from itself, with no other file touched."""
    import toy_family  # noqa: F401  (registers at import, as sodet/models/__init__.py imports the built-in ones)

    from sodet.models.registry import get_entry, get_family

    assert get_family(get_entry("toy-s8").family).display == "Toy single-level detector"
    common = ["--data", MINI, "--imgsz", "128", "--device", "cpu", "--batch", "8", "--workers", "0", "-o", "plots=False",
              "--project", tmp_path]
    result = cli("train", "--model", "toy-s8", *common, "--epochs", "2", "--weighted-loss", "2", "--weight-form", "scale",
                 "--copy-paste", "--name", "t")
    assert result.exit_code == 0, result.output + repr(result.exception)
    run = tmp_path / "t"
    assert json.loads((run / "metrics.json").read_text())["dataset"]["classes"] == ["person", "car"]
    import torch

    model = torch.load(run / "weights" / "last.pt", weights_only=False)["model"]
    assert model.rule.weight == 2.0 and (run / "copy_paste.yaml").is_file()
    result = cli("val", "--model", run / "weights" / "best.pt", "--data", MINI, "--imgsz", "128", "--device", "cpu",
                 "--out", tmp_path / "v")
    assert result.exit_code == 0, result.output + repr(result.exception)
    result = cli("distill", "--teacher", run / "weights" / "best.pt", "--model", "toy-s8", *common, "--epochs", "1", "--name", "d")
    assert result.exit_code == 0, result.output + repr(result.exception)
    with open(tmp_path / "d" / "results.csv") as f:
        header = [c.strip() for c in f.readline().split(",")]
    assert "train/cwd_loss" in header


@pytest.mark.parametrize("doc", ["docs/architecture.md"])
def test_the_architecture_map_names_what_exists(doc):
    text = (REPO / doc).read_text()
    for path in re.findall(r"`(sodet/[\w/]+\.py)`", text):
        assert (REPO / path).is_file(), path
