"""Adapters for inference servers (MLServer, Triton) behind one small interface. Built in a later issue."""
