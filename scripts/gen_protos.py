"""Generate the Python gRPC code for protos/ into compressor/rpc/ (committed; a test checks it is current).

    python scripts/gen_protos.py [OUTPUT_DIR]
"""

from __future__ import annotations

import sys
from pathlib import Path

from grpc_tools import protoc

ROOT = Path(__file__).resolve().parent.parent
PROTOS = ROOT / "protos"
PACKAGE = "compressor.rpc"


def generate(output: Path) -> list[Path]:
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
        path.write_text(path.read_text().replace("from focal.", f"from {PACKAGE}.focal."))
    for folder in {p.parent for p in written} | {output}:
        while folder != output.parent:
            (folder / "__init__.py").touch()
            folder = folder.parent
    return written


if __name__ == "__main__":
    target = Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "compressor" / "rpc"
    for path in generate(target):
        print(path.relative_to(target.parent))
