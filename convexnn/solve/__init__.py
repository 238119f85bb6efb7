"""Solvers of eq. 4, one per method (registry.SOLVERS states what each supports)."""
