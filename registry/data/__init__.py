"""The registry's data work, pure (no HTTP, no database): reading datasets (datasets.py, sources.py, tables.py,
sample_lists.py), the directives language that prepares them (directives.py), splitting them into train and test
(splits.py), and per-field statistics of a split with a train/test similarity (field_stats.py, histograms.py)."""
