"""Flower wiring only: ClientApp, ServerApp and conversions between records and tensors."""
