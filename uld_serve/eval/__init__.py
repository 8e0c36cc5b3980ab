"""TOFU evaluation with open-unlearning's metric definitions and log layout."""
