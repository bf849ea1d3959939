"""``@triton.jit`` code, kept apart from the kernel classes so that importing a kernel class (the registry,
spec validation, the CPU-only tuner) never imports Triton, and so that tests can choose between the
interpreter (``TRITON_INTERPRET=1``, read when a module here is first imported) and the compiler."""

import os

os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")  # Triton 3.9 warns when unset; 1 keeps its current default


def _interpret_bf16_dots_in_fp32() -> None:
    """Make Triton 3.9's interpreter compute bf16 as a GPU does, so bf16 kernels can be checked on a CPU.

    The interpreter keeps a bf16 tensor as its raw uint16 bits (numpy has no bf16), and two of its
    operations take those bits for the value (triton/runtime/interpreter.py):

    - ``create_dot`` widens only 8-bit float operands before ``np.matmul``, so a bf16 ``tl.dot`` multiplies
      bit patterns as integers (results near 1e11). Here bf16 operands are widened to fp32 first, exactly,
      as the interpreter already widens fp8; tensor cores multiply bf16 and accumulate in fp32 alike.
    - ``cast_impl`` narrows fp32 to bf16 by dropping the low 16 bits (rounding towards zero), where the
      GPU's conversion rounds to nearest even: an error of up to one bf16 step instead of half a step,
      biased, which a reference that rounds as the GPU does sees as a wrong result. Here it rounds to nearest
      even.

    Idempotent; compiled kernels never reach this code. Applied when this package is imported with
    ``TRITON_INTERPRET=1``.
    """
    import numpy as np
    import triton.language as tl
    from triton.runtime.interpreter import InterpreterBuilder, TensorHandle

    if getattr(InterpreterBuilder.create_dot, "widens_bf16", False):
        return
    dot, cast = InterpreterBuilder.create_dot, InterpreterBuilder.cast_impl

    def create_dot(self, a, b, d, input_precision, max_num_imprecise_acc):  # noqa: ANN001, ANN202 - Triton's
        if a.dtype.scalar == tl.bfloat16:
            a = cast(self, a, tl.float32)
        if b.dtype.scalar == tl.bfloat16:
            b = cast(self, b, tl.float32)
        return dot(self, a, b, d, input_precision, max_num_imprecise_acc)

    def cast_impl(self, src, dst_type):  # noqa: ANN001, ANN202 - Triton's
        if src.dtype.scalar == tl.float32 and dst_type.scalar == tl.bfloat16:
            value = np.asarray(src.data, dtype=np.float32)
            bits = value.view(np.uint32)
            nearest_even = (bits + np.uint32(0x7FFF) + ((bits >> 16) & np.uint32(1))) >> 16
            return TensorHandle(np.where(np.isnan(value), 0x7FC0, nearest_even).astype(np.uint16), tl.bfloat16)
        return cast(self, src, dst_type)

    create_dot.widens_bf16 = True
    InterpreterBuilder.create_dot = create_dot
    InterpreterBuilder.cast_impl = cast_impl


if os.environ.get("TRITON_INTERPRET") == "1":
    _interpret_bf16_dots_in_fp32()
