"""Tunable kernels and their backends. Each kernel implements :class:`tuner.kernel.Kernel`."""
