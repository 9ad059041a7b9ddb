"""Helpers of benchmarks/scale_sim.py: scenario generation, controllers, simulated hosts."""
