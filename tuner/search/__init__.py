"""How the next config is chosen: samplers (the cotune sampler, Optuna's), warm starts from related studies,
early stopping, and replay of recorded tuning data through the same search.

Imports the core modules, space/, measure/ and spec/."""
