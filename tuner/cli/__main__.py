"""``python -m cotune.tuner.cli``: the ``cotune`` command without its console script."""

from cotune.tuner.cli.main import main

main()
