"""Leader election among scheduler replicas with a ``coordination.k8s.io/v1`` Lease (see lease_elector.py)."""
