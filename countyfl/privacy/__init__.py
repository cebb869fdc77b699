"""Differential privacy (Opacus DP-SGD, accounting, the per-site budget ledger) and HE keys."""
