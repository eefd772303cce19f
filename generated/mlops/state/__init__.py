"""protoc output for proto/. Written by scripts/gen_protos.py; never edit by hand."""
