"""The Open Inference Protocol over gRPC: `inference.GRPCInferenceService` and gRPC health.

An edge beside the REST API: each worker process runs a `grpc.aio` server next to uvicorn,
calling the same dataplane, authentication, limits and metrics as REST (`berth.server` joins
them). The protocol's messages come from `generated/`, made from `proto/` by `make grpc-code`.
"""
