"""Quadruplet datasets: ViSU JSON, ViSU-Text, quadruplet JSONL/CSV; collation for training."""
