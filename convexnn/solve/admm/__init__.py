"""The ADMM solver of eq. 4."""
