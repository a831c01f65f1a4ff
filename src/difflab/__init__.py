"""difflab: compare diffusion noise schedules and reverse-time solvers."""

__version__ = "0.1.0"
