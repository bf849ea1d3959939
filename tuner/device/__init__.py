"""Device profiles: what a study runs on. The local CPU or CUDA device (driver API and NVML), recorded
profiles of GPUs for planning without one, and the datasheet peak table for rooflines.

Imports only the core modules (errors, types)."""
