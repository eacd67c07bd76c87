"""Code generated from `berth/grpc/proto/` by `make grpc-code`; do not edit by hand."""
