"""deepmemory-service: synthetic training data and Deep Memory training with failed-run recovery."""

__version__ = "0.1.0"
