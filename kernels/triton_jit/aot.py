"""Ahead-of-time compilation of a ``@triton.jit`` kernel for a GPU target, without a GPU.

Triton compiles to PTX and cubin with the ptxas it ships, so a CPU machine can check that a config
compiles for sm_80/sm_90 and read the shared memory the compiled kernel really needs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Compiled:
    shared_bytes: int
    num_warps: int
    num_stages: int
    cubin_bytes: int


def compile_for(
    fn: Any,
    signature: dict[str, str],
    constexprs: dict[str, Any],
    *,
    capability: int,
    num_warps: int,
    num_stages: int,
    aligned: tuple[str, ...] = (),
) -> Compiled:
    """Compile ``fn`` for ``sm_<capability>``; ``signature`` maps each argument to a Triton type string
    ("*fp16", "i32", "constexpr", ...), ``constexprs`` gives the compile-time values.

    ``aligned`` names the arguments a real launch would see as multiples of 16 (pointers from torch, dims
    and strides divisible by 16). The JIT specialises on that and so must we: without the hint the
    compiler cannot vectorise 16-bit loads, does not pipeline them, and reports a fraction of the shared
    memory the launched kernel uses. An integer argument equal to 1 (a unit stride) is specialised by the
    JIT as a constant: pass it in ``constexprs`` with signature "constexpr".
    """
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    names = list(fn.arg_names)
    attrs = {(names.index(a),): [["tt.divisibility", 16]] for a in aligned}
    src = ASTSource(fn=fn, signature=signature, constexprs=constexprs, attrs=attrs)
    k = triton.compile(
        src, target=GPUTarget("cuda", capability, 32), options={"num_warps": num_warps, "num_stages": num_stages}
    )
    return Compiled(int(k.metadata.shared), num_warps, num_stages, len(k.asm["cubin"]))
