"""The knowledge every modelplane process shares about what the Scheduler API describes.

Owned here, not by the scheduler, so an agent, the gateway and the trainer read the same rules without
importing another process: ``names`` (model and server names), ``limits`` (every limit on what the API
accepts, and the checks that apply them), ``errors`` (the domain errors those checks raise, one per gRPC
status code), ``model_resources`` (instances and memory a model needs), ``pipelines`` (pipeline validation
and the grammar of step references).
"""
