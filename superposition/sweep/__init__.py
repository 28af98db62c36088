"""A multirun as one unit: its manifest, each job's state, and the sweep's collected results.

`python -m superposition.sweep status SWEEP_DIR` and `python -m superposition.sweep collect
SWEEP_DIR` (sweep/__main__.py).
"""
