"""Deploying Berth: bundles (Dockerfile, compose, Kubernetes, KubeRay) and the Ray Serve engine."""
