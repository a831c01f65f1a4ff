"""UniPC (Zhao et al. 2023): unified predictor-corrector in log-SNR with data prediction."""
