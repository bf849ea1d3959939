"""The cost model every matrix-product kernel shares: ``C[M, N] = A[M, K] @ B[K, N]``."""

from __future__ import annotations

from typing import ClassVar

from cotune.tuner.measure.kernel import Kernel
from cotune.tuner.types import Precision, Problem


class GemmKernel(Kernel):
    """A kernel over dims M, N, K (M the batch): 2MNK flops, and each operand and the output moved once."""

    shape_dims: ClassVar[tuple[str, ...]] = ("M", "N", "K")
    batch_dim: ClassVar[str] = "M"

    def output_bytes(self, precision: Precision) -> int:
        """Bytes per output element; a kernel whose output type differs from its inputs' overrides this."""
        return precision.itemsize

    def flops(self, problem: Problem) -> float:
        d = problem.dims
        return 2.0 * d["M"] * d["N"] * d["K"]

    def bytes_moved(self, problem: Problem) -> float:
        d = problem.dims
        inputs = problem.dtype.itemsize * (d["M"] * d["K"] + d["K"] * d["N"])
        return float(inputs + self.output_bytes(problem.dtype) * d["M"] * d["N"])
