"""The layout shows the parts: compressor/ is folders by part, imports run one way, no module
shadows the standard library."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("engine", "compressor", "bench", "devtools", "loadtests")
# Which parts of compressor/ may import which
# (cli -> service -> {compression, retrieval} -> {embedding, text} and engine).
ALLOWED = {
    "text": set(),
    "embedding": set(),
    "compression": {"text", "embedding"},
    "retrieval": {"text", "embedding"},
    "service": {"compression", "retrieval", "embedding", "client"},
    "cli": {"service", "compression", "retrieval", "embedding", "client"},
    "client": set(),
}


def modules(package: str) -> list[Path]:
    return sorted((ROOT / package).rglob("*.py"))


def imported(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def part_of(name: str) -> str | None:
    """``compressor.<part>...`` -> part (a module directly in compressor/ is its own part)."""
    pieces = name.split(".")
    return pieces[1] if pieces[0] == "compressor" and len(pieces) > 1 else None


def test_compressor_is_folders_by_part():
    loose = sorted(p.name for p in (ROOT / "compressor").glob("*.py"))
    assert loose == ["__init__.py", "__main__.py", "client.py"]


def test_no_module_shadows_the_standard_library():
    shadowing = [str(p.relative_to(ROOT)) for package in PACKAGES for p in modules(package)
                 if p.stem in sys.stdlib_module_names or p.parent.name in sys.stdlib_module_names]
    assert not shadowing


def test_imports_run_one_way():
    wrong = []
    for path in modules("compressor"):
        relative = path.relative_to(ROOT / "compressor")
        own = relative.parts[0].removesuffix(".py")
        if own not in ALLOWED:
            continue
        for name in imported(path):
            target = part_of(name)
            if target is not None and target != own and target not in ALLOWED[own]:
                wrong.append(f"{relative} imports {name}")
    for path in modules("engine"):
        wrong += [f"{path.relative_to(ROOT)} imports {n}" for n in imported(path)
                  if n.split(".")[0] in ("compressor", "bench", "devtools")]
    assert not wrong, "\n".join(wrong)


def test_the_runtime_packages_do_not_reach_into_development_helpers():
    reaching = [f"{p.relative_to(ROOT)} imports {n}" for package in ("engine", "compressor") for p in modules(package)
                for n in imported(p) if n.split(".")[0] in ("bench", "devtools", "tests", "loadtests")]
    assert not reaching
