"""The engine's C kernels on the CPU: int8 matmuls and sparse-MoE layers for decode steps
(``int8_kernels.c``), one-query attention over the KV cache (``decode_attention.c``) and bf16
matmuls of every row count on weights in the kernel's own layout (``bf16_matmul.c``, on CPUs with
AVX-512 BF16). Built once with the system C compiler into one shared library, loaded with ctypes.

Building takes about a second; ``scripts/setup.sh`` and the image build do it at install
(``python -c 'from engine import native; print(native.status())'``), else the first decode step on
the CPU does. The shared library is kept under ``$FOCAL_NATIVE_DIR`` (default
``~/.cache/focal/native``), named by a hash of the source and the flags, so an edited source is
rebuilt and never loaded stale. ``FOCAL_NATIVE_ISA=avx2|plain`` caps the vector width.
Where there is no compiler, the CPU is not x86-64 or ``FOCAL_NATIVE=0`` is set, the kernels are
unavailable and decode falls back to PyTorch (``_weight_int8pack_mm``, two matmuls for attention);
``status()`` says which, and the server logs it at start.

Under ``torch.compile`` the kernels are custom operators (``torch.ops.focal.*``) with shape-only fake
implementations, so a compiled graph keeps them instead of breaking at a ctypes call; eager code
calls them directly (the operator dispatch costs tens of microseconds a call).
"""

from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import platform
import shutil
import subprocess
import tempfile
import threading
from pathlib import Path

import torch

log = logging.getLogger("focal.engine")

SOURCES = tuple(Path(__file__).with_name(name) for name in ("int8_kernels.c", "decode_attention.c", "bf16_matmul.c"))
HEADERS = (Path(__file__).with_name("bf16.h"),)  # part of the build: an edited header is rebuilt too
FLAGS = ("-O3", "-std=gnu11", "-fPIC", "-shared", "-fopenmp")
LEVELS = {0: "plain C", 1: "AVX2", 2: "AVX-512 VNNI"}

_lock = threading.Lock()
_library: ctypes.CDLL | None = None
_reason = "not loaded yet"


class NativeBuildError(RuntimeError):
    pass


def cache_dir() -> Path:
    return Path(os.environ.get("FOCAL_NATIVE_DIR") or Path.home() / ".cache" / "focal" / "native")


def library_path() -> Path:
    digest = hashlib.sha256(b"".join(f.read_bytes() for f in (*SOURCES, *HEADERS)) + " ".join(FLAGS).encode())
    return cache_dir() / f"focal_kernels-{platform.machine()}-{digest.hexdigest()[:16]}.so"


def build() -> Path:
    """Compile the kernels if this source has not been built yet; returns the library's path."""
    target = library_path()
    if target.exists():
        return target
    if platform.machine() not in ("x86_64", "AMD64"):
        raise NativeBuildError(f"the kernels are written for x86-64, this CPU is {platform.machine()}")
    compiler = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if not compiler:
        raise NativeBuildError("no C compiler (cc or gcc) on PATH")
    target.parent.mkdir(parents=True, exist_ok=True)
    # Built beside the target and renamed into place: processes building at once never load half a file.
    with tempfile.TemporaryDirectory(dir=target.parent) as scratch:
        partial = Path(scratch) / target.name
        try:
            done = subprocess.run([compiler, *FLAGS, *map(str, SOURCES), "-o", str(partial)], capture_output=True,
                                  text=True)
        except OSError as exc:
            raise NativeBuildError(f"cannot run the C compiler {compiler}: {exc.strerror}") from exc
        if done.returncode:
            raise NativeBuildError(f"{compiler} failed: {done.stderr.strip()[-500:]}")
        os.replace(partial, target)
    return target


ISA_CAPS = {"avx512": 2, "avx2": 1, "plain": 0}


def _load() -> ctypes.CDLL:
    lib = ctypes.CDLL(str(build()))
    pointer, i64, c_int = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int
    lib.focal_int8_level.argtypes = [c_int]
    lib.focal_int8_level.restype = c_int
    lib.focal_int8_gemv.argtypes = [pointer, c_int, pointer, pointer, c_int, pointer, i64, i64, c_int]
    lib.focal_int8_gemv.restype = c_int
    lib.focal_int8_moe.argtypes = [pointer, i64, pointer, pointer, pointer, pointer, pointer, pointer, c_int,
                                   i64, i64, pointer, c_int]
    lib.focal_int8_moe.restype = c_int
    lib.focal_decode_attention.argtypes = [pointer, pointer, pointer, pointer, c_int, *[i64] * 13, ctypes.c_float,
                                           pointer, c_int]
    lib.focal_decode_attention.restype = c_int
    lib.focal_bf16_available.argtypes = []
    lib.focal_bf16_available.restype = c_int
    lib.focal_bf16_matmul.argtypes = [pointer, i64, i64, pointer, i64, pointer, c_int, c_int]
    lib.focal_bf16_matmul.restype = None
    lib.focal_bf16_moe.argtypes = [pointer, i64, pointer, pointer, pointer, pointer, i64, i64, pointer, c_int]
    lib.focal_bf16_moe.restype = c_int
    cap = os.environ.get("FOCAL_NATIVE_ISA", "")
    if cap and cap not in ISA_CAPS:
        raise NativeBuildError(f"FOCAL_NATIVE_ISA={cap!r}: use one of {', '.join(ISA_CAPS)}")
    lib.focal_int8_level(ISA_CAPS.get(cap, -1))
    return lib


def library() -> ctypes.CDLL | None:
    """The loaded kernels, or None where they are unavailable (``status()`` says why)."""
    global _library, _reason
    with _lock:
        if _library is None and _reason == "not loaded yet":
            if os.environ.get("FOCAL_NATIVE", "1") == "0":
                _reason = "turned off (FOCAL_NATIVE=0)"
            else:
                try:
                    _library = _load()
                    _reason = ""
                except (NativeBuildError, OSError) as exc:
                    _reason = str(exc)
                    log.warning("native int8 kernels unavailable; int8 uses PyTorch's kernel",
                                extra={"fields": {"reason": _reason}})
        return _library


def status() -> str:
    lib = library()
    if lib is None:
        return f"unavailable ({_reason})"
    bf16 = " and BF16" if bf16_matmul_available() else ""
    return f"loaded ({LEVELS[lib.focal_int8_level(-1)]}{bf16})"


def bf16_matmul_available() -> bool:
    """Whether ``bf16_matmul`` can run: the kernels are built, the CPU has AVX-512 BF16 and
    ``FOCAL_NATIVE_ISA`` does not cap the vector width below AVX-512."""
    lib = library()
    return lib is not None and lib.focal_int8_level(-1) == 2 and bool(lib.focal_bf16_available())


def usable(x: torch.Tensor) -> bool:
    """Whether the kernels can take ``x`` (CPU, fp32 or bf16) and are built."""
    if x.device.type != "cpu" or x.dtype not in (torch.float32, torch.bfloat16):
        return False
    # Once settled, a plain read (no lock): torch.compile traces this and cannot enter a lock.
    return _library is not None if _reason != "not loaded yet" else library() is not None


def _scale_kind(scale: torch.Tensor) -> int:
    if scale.dtype == torch.bfloat16:
        return 1
    if scale.dtype == torch.float32:
        return 0
    raise TypeError(f"int8 scales must be fp32 or bf16, not {scale.dtype}")


def _checked(code: int) -> None:
    if code:
        raise MemoryError("a native decode kernel could not allocate its scratch space")


def _gemv(x: torch.Tensor, q: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    row, q, scale = x.contiguous(), q.contiguous(), scale.contiguous()
    out = torch.empty(*x.shape[:-1], q.shape[0], dtype=x.dtype)
    _checked(library().focal_int8_gemv(row.data_ptr(), x.dtype == torch.bfloat16, q.data_ptr(), scale.data_ptr(),
                                       _scale_kind(scale), out.data_ptr(), q.shape[0], q.shape[1],
                                       torch.get_num_threads()))
    return out


def _moe(x: torch.Tensor, weights: torch.Tensor, experts: torch.Tensor, gate_up_q: torch.Tensor,
         gate_up_scale: torch.Tensor, down_q: torch.Tensor, down_scale: torch.Tensor) -> torch.Tensor:
    row = x.reshape(-1).float().contiguous()
    chosen = experts.reshape(-1).to(torch.int64).contiguous()
    routing = weights.reshape(-1).float().contiguous()
    gate_up_q, gate_up_scale, down_q, down_scale = (
        t.contiguous() for t in (gate_up_q, gate_up_scale, down_q, down_scale))  # the C code reads them flat
    inter, hidden = down_q.shape[2], down_q.shape[1]
    out = torch.empty(hidden, dtype=torch.float32)
    _checked(library().focal_int8_moe(row.data_ptr(), chosen.shape[0], chosen.data_ptr(), routing.data_ptr(),
                                      gate_up_q.data_ptr(), gate_up_scale.data_ptr(), down_q.data_ptr(),
                                      down_scale.data_ptr(), _scale_kind(gate_up_scale), inter, hidden,
                                      out.data_ptr(), torch.get_num_threads()))
    return out.to(x.dtype).reshape(1, hidden)


def _attention(q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    batch, heads, _, dim = q.shape
    if q.stride(-1) != 1:
        q = q.contiguous()
    keys, values = (t if t.stride(-1) == 1 else t.contiguous() for t in (keys, values))
    row_mask = mask.reshape(-1).float().contiguous()
    out = torch.empty(batch, heads, 1, dim, dtype=q.dtype)
    _checked(library().focal_decode_attention(
        q.data_ptr(), keys.data_ptr(), values.data_ptr(), row_mask.data_ptr(), q.dtype == torch.bfloat16,
        batch, heads, keys.shape[1], keys.shape[2], dim, q.stride(0), q.stride(1),
        keys.stride(0), keys.stride(1), keys.stride(2), values.stride(0), values.stride(1), values.stride(2),
        dim**-0.5, out.data_ptr(), torch.get_num_threads()))
    return out


def bf16_matmul(x: torch.Tensor, tiles: torch.Tensor, out_features: int) -> torch.Tensor:
    """``x @ W.T`` for bf16 rows x [..., K] and W [out_features, K] stored as ``tiles`` (see
    ``engine.tiles``): fp32 sums, the result rounded once to bf16. Requires ``bf16_matmul_available()``."""
    if torch.compiler.is_compiling():
        return _bf16_matmul_op(x, tiles, out_features)
    return _bf16_matmul(x, tiles, out_features)


def _bf16_matmul(x: torch.Tensor, tiles: torch.Tensor, out_features: int) -> torch.Tensor:
    flat = x.reshape(-1, x.shape[-1])
    if not flat.is_contiguous():
        flat = flat.contiguous()
    out = torch.empty(*x.shape[:-1], out_features, dtype=torch.bfloat16)
    library().focal_bf16_matmul(flat.data_ptr(), flat.shape[0], flat.shape[1], tiles.data_ptr(), out_features,
                                out.data_ptr(), 0, torch.get_num_threads())
    return out


@torch.library.custom_op("focal::bf16_matmul", mutates_args=())
def _bf16_matmul_op(x: torch.Tensor, tiles: torch.Tensor, out_features: int) -> torch.Tensor:
    return _bf16_matmul(x, tiles, out_features)


@_bf16_matmul_op.register_fake
def _(x: torch.Tensor, tiles: torch.Tensor, out_features: int) -> torch.Tensor:
    return x.new_empty(*x.shape[:-1], out_features)


def bf16_moe(x: torch.Tensor, weights: torch.Tensor, experts: torch.Tensor, gate_up: torch.Tensor,
             down: torch.Tensor, inter: int) -> torch.Tensor:
    """One bf16 token [1, H] through its chosen experts, ``sum_k weights[k] * expert_k(x)``, with every
    expert's gate_up [2I, H] and down [H, I] as tiles (``gate_up`` [E, ...], ``down`` [E, ...]); gate
    and up stay fp32, SiLU(gate) * up is rounded to bf16 once. Requires ``bf16_matmul_available()``."""
    hidden = x.shape[-1]
    row = x.reshape(-1).contiguous()
    chosen = experts.reshape(-1).to(torch.int64).contiguous()
    routing = weights.reshape(-1).float().contiguous()
    out = torch.empty(1, hidden, dtype=torch.bfloat16)
    _checked(library().focal_bf16_moe(row.data_ptr(), chosen.shape[0], chosen.data_ptr(), routing.data_ptr(),
                                      gate_up.data_ptr(), down.data_ptr(), inter, hidden, out.data_ptr(),
                                      torch.get_num_threads()))
    return out


@torch.library.custom_op("focal::int8_gemv", mutates_args=())
def _gemv_op(x: torch.Tensor, q: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return _gemv(x, q, scale)


@_gemv_op.register_fake
def _(x: torch.Tensor, q: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return x.new_empty(*x.shape[:-1], q.shape[0])


@torch.library.custom_op("focal::int8_moe", mutates_args=())
def _moe_op(x: torch.Tensor, weights: torch.Tensor, experts: torch.Tensor, gate_up_q: torch.Tensor,
            gate_up_scale: torch.Tensor, down_q: torch.Tensor, down_scale: torch.Tensor) -> torch.Tensor:
    return _moe(x, weights, experts, gate_up_q, gate_up_scale, down_q, down_scale)


@_moe_op.register_fake
def _(x, weights, experts, gate_up_q, gate_up_scale, down_q, down_scale) -> torch.Tensor:
    return x.new_empty(1, down_q.shape[1])


@torch.library.custom_op("focal::decode_attention", mutates_args=())
def _attention_op(q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return _attention(q, keys, values, mask)


@_attention_op.register_fake
def _(q, keys, values, mask) -> torch.Tensor:
    return q.new_empty(q.shape)


def decode_attention(q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """One query per head, q [B, H, 1, D], over keys/values [B, Hkv, S, D] of q's dtype with the
    additive mask [1, S] shared by every row and head: softmax(q K^T / sqrt(D) + mask) V in fp32,
    the result [B, H, 1, D] in q's dtype; masked (-inf) positions are not read. Requires
    ``usable(q)``."""
    if torch.compiler.is_compiling():
        return _attention_op(q, keys, values, mask)
    return _attention(q, keys, values, mask)


def int8_gemv(x: torch.Tensor, q: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """``x @ (q * scale).T`` for one row x [..., K] (fp32 or bf16), q [N, K] int8, scale [N] (fp32
    or bf16); x rounded to int16 with one scale, exact integer sums moved to fp32 (see the C
    source), the result in x's dtype. Requires ``usable(x)``."""
    if torch.compiler.is_compiling():
        return _gemv_op(x, q, scale)
    return _gemv(x, q, scale)


def int8_moe(x: torch.Tensor, weights: torch.Tensor, experts: torch.Tensor, gate_up_q: torch.Tensor,
             gate_up_scale: torch.Tensor, down_q: torch.Tensor, down_scale: torch.Tensor) -> torch.Tensor:
    """One token [1, H] through its chosen experts: ``sum_k weights[k] * expert_k(x)`` with each
    expert a SwiGLU over int8 rows (gate_up_q [E, 2I, H], gate rows first; down_q [E, H, I]), as
    ``Experts.row_by_row`` computes it; activations in fp32 between the matmuls, each matmul as in
    ``int8_gemv``. Requires ``usable(x)``."""
    if torch.compiler.is_compiling():
        return _moe_op(x, weights, experts, gate_up_q, gate_up_scale, down_q, down_scale)
    return _moe(x, weights, experts, gate_up_q, gate_up_scale, down_q, down_scale)
