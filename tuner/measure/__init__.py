"""How a config becomes a measurement: the kernel contract and registry, the isolated candidate process, the
compile-ahead pool, the objective (screen, measure) and the trial record a study keeps.

Imports the core modules, space/ and device/; reaches kernels only through the registry."""
