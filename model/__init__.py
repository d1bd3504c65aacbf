"""Plain PyTorch model code (no Prefect imports)."""
