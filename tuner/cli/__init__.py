"""The ``cotune`` command line: local tuning and review (main), the service commands, co-design commands.

The top layer: imports anything."""
