"""The gateway's edges: how requests arrive (REST app, V2 gRPC service with its codec, the gRPC edge that
wires the service to the router). Each converts at the boundary and calls the router; none routes."""
