"""Reprise GPU backend."""

__version__ = "0.1.0"  # keep equal to pyproject.toml's [project] version (tests/test_kv_io.py checks)
