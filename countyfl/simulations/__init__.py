"""Scenarios, the simulation runner, baselines, and the report with its plots."""
