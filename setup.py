"""Maps the top-level folders tuner/, kernels/ and worker/ into the one ``cotune`` import namespace
(``cotune.tuner``, ``cotune.kernels``, ``cotune.worker``); everything else is in pyproject.toml."""

from setuptools import find_packages, setup

FOLDERS = ("tuner", "kernels", "worker")

setup(
    package_dir={f"cotune.{folder}": folder for folder in FOLDERS},
    packages=[f"cotune.{folder}" for folder in FOLDERS]
    + [f"cotune.{folder}.{sub}" for folder in FOLDERS for sub in find_packages(folder)],
)
