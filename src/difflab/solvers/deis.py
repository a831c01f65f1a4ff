"""DEIS (Zhang & Chen 2023): diffusion exponential integrator sampler, time-quadratic AB (tAB)."""
