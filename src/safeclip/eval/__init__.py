"""Evaluation: retrieval protocols and metrics."""
