"""Fine-tuning TimeSformer with PyTorch Lightning (needs the `train` extra)."""
