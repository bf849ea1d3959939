"""What to tune: the job spec (YAML, validated, errors with file and line) and the settings that say where
results go.

Imports the core modules, device/ (recorded profiles: the known hardware kinds), space/ and measure/ (kernel
registry, bench settings)."""
