"""Helpers of the generated Triton kernels: Triton detection, source generation, loading.

The fused kernels are generated as Python source for each shape and non-zero pattern of
their matrices (unrolled scalar code, one trajectory per GPU thread) and loaded from a file,
because Triton's JIT reads a kernel's source through :mod:`inspect`.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import os
import tempfile

import numpy as np

from .._io import atomic_write_text


@functools.lru_cache(maxsize=1)
def triton_module():
    """The ``triton`` module, or ``None`` without Triton."""
    try:
        import triton
        import triton.language
        from triton.language.random import philox  # noqa: F401
    except Exception:  # noqa: BLE001 - any import failure means: no Triton
        return None
    return triton


def interpreting() -> bool:
    """Whether Triton runs in its CPU interpreter (``TRITON_INTERPRET=1``)."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def entries(name: str, M: np.ndarray, hoist: bool) -> dict:
    """``(i, j) -> expression`` of the non-zero entries of the pattern ``M`` (matrix at pointer ``name_ptr``).

    ``hoist``: the expression is a variable ``name_i_j`` (loaded once, see :func:`hoisted_loads`);
    otherwise a load that is repeated wherever the entry is used.
    """
    rows, cols = M.shape
    return {(i, j): (f"{name}_{i}_{j}" if hoist else f"tl.load({name}_ptr + {i * cols + j})")
            for i in range(rows) for j in range(cols) if M[i, j]}


def hoisted_loads(name: str, M: np.ndarray, indent: str = "    ") -> list[str]:
    """Source lines loading the non-zero entries of ``M`` into variables ``name_i_j``."""
    cols = M.shape[1]
    return [f"{indent}{name}_{i}_{j} = tl.load({name}_ptr + {i * cols + j})"
            for i in range(M.shape[0]) for j in range(cols) if M[i, j]]


def matvec(terms: list, zero: str = "zero_f") -> str:
    """Source of the sum of ``factor * entry`` terms (``zero`` when there are none)."""
    return " + ".join(f"{a} * {b}" for a, b in terms) if terms else zero


def column(ent: dict, var: str, j: int) -> list:
    """Terms ``(var_i, entry)`` of column ``j`` of a row-vector product ``var @ M``."""
    return [(f"{var}{i}", e) for (i, jj), e in ent.items() if jj == j]


def cache_dir() -> str:
    """Where generated kernel sources are written (``$LQGT_CACHE`` or ``~/.cache/lqgt``, else a temp dir)."""
    for d in (os.environ.get("LQGT_CACHE"), os.path.join(os.path.expanduser("~"), ".cache", "lqgt"),
              os.path.join(tempfile.gettempdir(), f"lqgt-{os.getuid() if hasattr(os, 'getuid') else 0}")):
        if not d:
            continue
        try:
            os.makedirs(os.path.join(d, "kernels"), exist_ok=True)
            return os.path.join(d, "kernels")
        except OSError:
            continue
    raise RuntimeError("lqgt.kernels: no writable cache directory (set LQGT_CACHE)")


def load_kernel(text: str, stem: str):
    """Write the generated source ``text`` (once, atomically) and return its ``kernel`` function."""
    mode = "interp" if interpreting() else "jit"
    digest = hashlib.sha1((text + mode).encode()).hexdigest()[:16]
    path = os.path.join(cache_dir(), f"{stem}_{digest}.py")
    if not os.path.exists(path):
        atomic_write_text(path, text)
    spec = importlib.util.spec_from_file_location(f"lqgt_kernel_{stem}_{digest}_{mode}", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.kernel


def pattern_key(mats) -> tuple:
    """Hashable non-zero patterns of the given tensors (the generated kernel's key)."""
    return tuple(((M != 0).cpu().numpy().astype(bool).tobytes(), tuple(M.shape)) for M in mats)


def unpack_pattern(key: tuple) -> tuple:
    """Inverse of :func:`pattern_key`: boolean arrays."""
    return tuple(np.frombuffer(p, dtype=bool).reshape(s) for p, s in key)


def noise_lines(Q: int, ext: bool, indent: str = "        ") -> list[str]:
    """Source of the step's standard normals ``e0 … e{Q-1}`` (inside the time loop, step ``k``).

    ``ext``: read from ``noise_ptr`` (debug entry, layout ``(steps, B, Q)``); otherwise
    Philox-4x32 with key ``seed`` and counter ``(trajectory, t0 + k, j // 4, 0)``, Box-Muller
    on the word pairs (the layout of :mod:`lqgt.kernels.philox`).
    """
    if ext:
        return [f"{indent}row = k * B + rbl"] + [
            f"{indent}e{q} = tl.load(noise_ptr + row * {Q} + {q}, mask=bm, other=0.0)" for q in range(Q)]
    out = [f"{indent}tk = zero + (t0 + k)"]
    for g in range(-(-Q // 4)):
        out.append(f"{indent}r0, r1, r2, r3 = philox(seed, rb, tk, zero + {g}, zero)")
        out.append(f"{indent}n0, n1 = pair_uniform_to_normal(uint_to_uniform_float(r0), uint_to_uniform_float(r1))")
        if 4 * g + 2 < Q:
            out.append(f"{indent}n2, n3 = pair_uniform_to_normal(uint_to_uniform_float(r2), uint_to_uniform_float(r3))")
        out += [f"{indent}e{4 * g + h} = n{h}.to(dt)" for h in range(4) if 4 * g + h < Q]
    return out


HEADER = ["import triton", "import triton.language as tl",
          "from triton.language.random import pair_uniform_to_normal, philox, uint_to_uniform_float", "", ""]


def prologue(first_ptr: str) -> list[str]:
    """Kernel lines after the signature: dtype, this program's trajectories ``rb`` (mask ``bm``,
    64-bit ``rbl``), integer and float zeros, the cost accumulator."""
    return [f"    dt = {first_ptr}.dtype.element_ty",
            "    rb = tl.program_id(0) * BB + tl.arange(0, BB)",
            "    bm = rb < B",
            "    rbl = rb.to(tl.int64)",
            "    zero = rb * 0",
            "    zero_f = tl.zeros((BB,), dtype=dt)",
            "    acc = tl.zeros((BB,), dtype=dt)"]


#: kernel lines that add the accumulated cost to ``cost_ptr``
EPILOGUE = ["    old = tl.load(cost_ptr + rb, mask=bm, other=0.0)", "    tl.store(cost_ptr + rb, old + acc, mask=bm)", ""]
