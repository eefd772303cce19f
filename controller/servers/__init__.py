"""Server resources -> the Kubernetes objects that run them (a StatefulSet and its headless Service), and the
reconciler that keeps those objects, the scheduler's expected replicas and the Server's status in step.

The builders (``server_objects``, ``pod_merge``, ``agent_container``) are pure: JSON objects in, JSON objects out,
no I/O, so every rule about what a Server's pods look like is tested without an API server.
"""
