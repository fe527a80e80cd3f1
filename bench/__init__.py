"""Benchmarks: each measures Focal and its peers in the same run and prints ratios."""
