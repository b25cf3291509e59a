"""Model checkpoints made here, without downloads: the tiny random test model, and more."""
