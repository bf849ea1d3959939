"""Ahead-of-time compilation of a ``@triton.jit`` kernel for a GPU target, without a GPU.

Triton compiles to PTX and cubin with the ptxas it ships, so a CPU machine can check that a config
compiles for sm_80/sm_90 and read the shared memory the compiled kernel really needs.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
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


@contextmanager
def compile_only(capability: int) -> Iterator[None]:
    """Inside, a ``@triton.jit`` function's ``warmup`` compiles for ``sm_<capability>`` without a GPU and returns
    the compiled kernel (``.asm["ptx"]``, ``.metadata.shared``): Triton's driver is replaced by one that
    answers only what compiling asks (the target, device 0, stream 0), so launching is impossible.

    Unlike :func:`compile_for`, the arguments are specialised by the JIT itself, exactly as for a real
    launch, so a test compiles what the precompile pool and the timed process would.
    """
    from triton.backends.compiler import GPUTarget
    from triton.runtime import driver

    class _CompileOnly:
        def get_current_target(self) -> GPUTarget:
            return GPUTarget("cuda", capability, 32)

        def get_current_device(self) -> int:
            return 0

        def get_current_stream(self, device: int | None = None) -> int:
            return 0

    previous = driver._active  # reset_active() would look for a real driver, which a CPU machine lacks
    driver.set_active(_CompileOnly())
    try:
        yield
    finally:
        driver._active = previous
