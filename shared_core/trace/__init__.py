"""Traceability (EnTruth): mark a dataset with a secret template and trigger, then verify models."""
