"""Evaluation metrics (layer 3): FID/KID through torch-fidelity, the digits/MNIST classifier
feature extractor, offline Inception weights, and batched bits/dim.

- ``difflab.metrics.fid.fid_kid``: FID (95% bootstrap interval) and KID with content-keyed
  reference statistics; ``feature_extractor="classifier"`` (CPU experiments) or ``"inception"``.
- ``difflab.metrics.classifier.train_classifier``: the dataset classifier whose penultimate
  features are registered with torch-fidelity as ``"difflab-classifier"``.
- ``difflab.metrics.inception``: ``python -m difflab.metrics.inception`` (``make fid-weights``).
  Rebuilt weights have no logits head: FID/KID only, no Inception Score.
- ``difflab.metrics.nll.evaluate_bpd``: bits/dim of held-out images through the PF-ODE.

Submodules are imported on demand (torch-fidelity loads only when a metric is used).
"""
