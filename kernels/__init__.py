"""Tunable kernels and their backends. Each kernel implements :class:`cotune.tuner.measure.kernel.Kernel`."""
