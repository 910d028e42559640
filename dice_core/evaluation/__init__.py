"""Evaluation: samples from the EMA weights, their metrics against reference statistics."""
