"""Benchmarks of the runner against helical's own loop (issues 2 and 6): `python -m bench --help`.

Results go to bench/results/ (git-ignored); docs/BENCHMARKS.md holds the table of one full run.
"""
