"""Machine-checked architecture rules.

1. Modules declared pure in pyproject.toml ([tool.titra.pure]) import no I/O or clock module:
   protocol and storage logic stays sans-I/O (h11, etcd/raft).
2. Dependencies point one way: node/ and chaos/ may import cluster/; cluster/ imports neither;
   nothing imports tests/.
"""

import ast
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PURE = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["titra"]["pure"]
PACKAGES = ["node", "cluster", "chaos"]


def imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), str(path))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


def module_path(name: str) -> Path:
    return ROOT / (name.replace(".", "/") + ".py")


def all_modules() -> list[tuple[str, Path]]:
    out = []
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            out.append((".".join(path.relative_to(ROOT).with_suffix("").parts), path))
    return out


@pytest.mark.parametrize("module", PURE["modules"])
def test_pure_module_imports_no_io(module: str) -> None:
    path = module_path(module)
    assert path.exists(), f"{module} is declared pure but {path} does not exist"
    forbidden = set(PURE["forbidden"])
    bad = sorted(m for m in imported_modules(path) if m.split(".")[0] in forbidden)
    assert not bad, f"pure module {module} imports {bad}"


def test_pure_modules_import_only_pure_project_modules() -> None:
    pure = set(PURE["modules"])
    for module in pure:
        for imported in imported_modules(module_path(module)):
            if imported.split(".")[0] in PACKAGES and module_path(imported).exists():
                assert imported in pure, f"pure module {module} imports {imported}, which is not declared pure"


@pytest.mark.parametrize(("module", "path"), all_modules())
def test_dependencies_point_one_way(module: str, path: Path) -> None:
    top = module.split(".", maxsplit=1)[0]
    tops = {m.split(".")[0] for m in imported_modules(path)}
    assert "tests" not in tops, f"{module} imports tests"
    if top == "cluster":
        assert not tops & {"node", "chaos"}, f"{module} (cluster/) imports {sorted(tops & {'node', 'chaos'})}"


def test_the_contract_can_fail(tmp_path: Path) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text("import time\nfrom asyncio import sleep\nimport os.path\n")
    found = {m.split(".")[0] for m in imported_modules(bad)}
    assert {"time", "asyncio", "os"} <= found & set(PURE["forbidden"])
