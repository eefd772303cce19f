"""Pipelines in the gateway: a pipeline's graph, its dataflow executor, the tensors passed between steps,
and the runner that ties them to the router."""
