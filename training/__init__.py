"""Fitting (import as `uld_training`): target/retain fine-tunes and the ULD assistant."""
