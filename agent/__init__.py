"""The modelplane agent: one per inference-server replica.

It holds one AgentService.Session stream with the scheduler (proto/mlops/agent/v1/agent.proto),
fetches model artifacts, loads and unloads them through a server adapter (see ``servers``), and
reports what the replica holds. Built in a later issue; the protocol is fixed now.
"""
