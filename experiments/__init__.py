"""One script per paper figure or table; run from the repository root with `PYTHONPATH=.`
(`python experiments/NAME.py`, or `python -m experiments.NAME`)."""
