"""Samplers in EDM's variables (Karras et al. 2022): y = x / alpha over s = sigma / alpha."""
