"""The controller: Seldon's custom resources (Model, Pipeline, Experiment, Server, ServerConfig) <-> the Scheduler API.

It watches the resources in the Kubernetes API (``resource_watcher``), hands each object's latest version to
the reconciler of its kind (``reconciling``), and writes status back through the status subresource. It holds
no state of its own: the API server's resources are the source of truth, and the scheduler's status streams say
what became of them.
"""
