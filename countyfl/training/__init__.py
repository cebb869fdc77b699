"""Plain PyTorch training and evaluation on one institution's data (no Flower imports)."""
