"""Pruning: the harness that calibrates and prunes block by block, mask refinement (DSnoT), calibration
data, and the conformance suite every method passes."""
