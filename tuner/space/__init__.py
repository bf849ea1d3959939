"""Search spaces: ``search_spaces/<kernel>.yaml`` loaded and schema-checked into params, constraints (data or
named predicates, never code) and known-good seeds.

Imports only the core modules (errors, types, yaml_lines)."""
