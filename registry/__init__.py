"""The registry: model management of seeds 001/002 (experiments, datasets, splits, models and their lifecycle)."""
