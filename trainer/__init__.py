"""The trainer: turns training events (seeds/000) into trained, stored and optionally served models."""
