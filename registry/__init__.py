"""The registry: model management of seeds 001 and 002 (experiments, datasets, splits, models and their lifecycle)."""
