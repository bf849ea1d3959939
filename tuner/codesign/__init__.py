"""From a model to its kernels and back: plans from a Hugging Face config, precision choice, time-and-energy
Pareto fronts, and the co-design report.

Imports the core modules, device/, measure/, spec/ and track/."""
