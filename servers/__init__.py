"""Adapters for inference servers (MLServer, Triton) behind one small interface (adapter.py), how to launch
them locally (launch/), and designed_model/, the code that serves a trained design inside MLServer."""
