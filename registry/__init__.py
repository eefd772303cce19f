"""The model registry process of issue 15: experiments, datasets, splits and models (seeds 001 and 002)."""
