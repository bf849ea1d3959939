"""What to tune: the job spec (YAML, validated, errors with file and line) and the settings that say where
results go.

Imports the core modules, space/ and measure/ (kernel registry, bench settings)."""
