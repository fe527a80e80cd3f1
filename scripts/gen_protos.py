"""Generate the Python gRPC code for protos/ into clients/python/focal_client/rpc/: the light client's
stubs, which the service imports too (Focal depends on the client distribution). Committed; a test
checks they are current.

    python scripts/gen_protos.py
"""

from __future__ import annotations

from pathlib import Path

from grpc_tools import protoc

ROOT = Path(__file__).resolve().parent.parent
PROTOS = ROOT / "protos"
TARGET = ROOT / "clients" / "python" / "focal_client" / "rpc"
PACKAGE = "focal_client.rpc"  # what the generated modules are imported as


def generate(output: Path, package: str = PACKAGE) -> list[Path]:
    output.mkdir(parents=True, exist_ok=True)
    sources = sorted(str(p.relative_to(PROTOS)) for p in PROTOS.rglob("*.proto"))
    include = Path(protoc.__file__).parent / "_proto"
    code = protoc.main(["protoc", f"-I{PROTOS}", f"-I{include}", f"--python_out={output}", f"--pyi_out={output}",
                        f"--grpc_python_out={output}", *sources])
    if code != 0:
        raise SystemExit(f"protoc failed with exit code {code}")
    written = sorted(p for p in output.rglob("*.py*") if p.is_file() and p.suffix in (".py", ".pyi"))
    for path in written:
        # Generated modules import each other as top-level `focal.…`; make that a path inside our package.
        path.write_text(path.read_text().replace("from focal.", f"from {package}.focal."))
    for folder in {p.parent for p in written} | {output}:
        while folder != output.parent:
            (folder / "__init__.py").touch()
            folder = folder.parent
    return written


if __name__ == "__main__":
    for path in generate(TARGET):
        print(path.relative_to(ROOT))
