"""The interior-point solver of eq. 4 and its pattern pricing."""
