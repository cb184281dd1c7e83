"""Hyperparameter search (``interest tune``)."""
