"""Compiled Cython kernels (built from the top-level kernels/ folder by setup.py)."""
