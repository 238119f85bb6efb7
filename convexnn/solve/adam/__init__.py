"""Hinge-penalised Adam on eq. 4 (App. B)."""
