"""The committed gRPC code (clients/python/focal_client/rpc, used by the client and the service) is what
protos/ generates (run scripts/gen_protos.py after editing)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_generated_code_is_current(tmp_path):
    spec = importlib.util.spec_from_file_location("gen_protos", ROOT / "scripts" / "gen_protos.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    fresh = tmp_path / "rpc"
    module.generate(fresh)
    committed_dir = module.TARGET
    names = sorted(p.relative_to(fresh) for p in fresh.rglob("*") if p.is_file())
    assert names == sorted(p.relative_to(committed_dir) for p in committed_dir.rglob("*")
                           if p.is_file() and "__pycache__" not in p.parts)
    for name in names:
        assert (fresh / name).read_text() == (committed_dir / name).read_text(), \
            f"{committed_dir.relative_to(ROOT)}/{name} is stale: run `python scripts/gen_protos.py`"
