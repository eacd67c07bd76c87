"""The Open Inference Protocol over gRPC: `inference.GRPCInferenceService` and gRPC health.

An edge beside the REST API: each worker process serves gRPC on its own event loop next to
uvicorn (HTTP/2 in `http2`, gRPC's framing and statuses in `calls`), calling the same
dataplane, authentication, limits and metrics as REST (`berth.server` joins them). The protocol's messages come from `generated/`, made from `proto/` by `make grpc-code`.
"""
