"""Iterative reconstruction solvers that consume convexnn denoisers."""

__all__: list[str] = []
