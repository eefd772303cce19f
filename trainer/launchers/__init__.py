"""Where a training run executes: a local process, a Kubernetes Job, or a container image."""
