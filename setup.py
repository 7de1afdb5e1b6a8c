"""haios's one C extension; everything else about the package is in pyproject.toml.

The record checks of a WAL verify, in C (haios/wal/_scan.c): optional, a speed-up only. Without a C
compiler or zlib's headers the install goes on without it, and verify runs its Python loop.
"""

from setuptools import Extension, setup

setup(ext_modules=[Extension("haios.wal._scan", ["haios/wal/_scan.c"], libraries=["z"], optional=True)])
