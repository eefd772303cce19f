"""The modelplane scheduler: the control plane behind the Seldon Core v2 Scheduler API.

Servicers (``*_service.py``) are thin: they translate protobuf to domain calls and domain errors to
gRPC status codes. Domain logic never imports grpc.
"""
