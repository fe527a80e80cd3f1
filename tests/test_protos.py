"""The committed gRPC code (compressor/rpc for the service, clients/python/focal_client/rpc for the light client)
is what protos/ generates (run scripts/gen_protos.py after editing)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("committed", ["compressor/rpc", "clients/python/focal_client/rpc"])
def test_generated_code_is_current(tmp_path, committed):
    spec = importlib.util.spec_from_file_location("gen_protos", ROOT / "scripts" / "gen_protos.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    fresh = tmp_path / "rpc"
    module.generate(fresh, module.TARGETS[ROOT / committed])
    committed_dir = ROOT / committed
    names = sorted(p.relative_to(fresh) for p in fresh.rglob("*") if p.is_file())
    assert names == sorted(p.relative_to(committed_dir) for p in committed_dir.rglob("*")
                           if p.is_file() and "__pycache__" not in p.parts)
    for name in names:
        assert (fresh / name).read_text() == (committed_dir / name).read_text(), \
            f"{committed}/{name} is stale: run `python scripts/gen_protos.py`"
