"""Datasets: toy data with exact denoisers, and Lightning datamodules."""
