"""ONNX acceleration: convert a version, prove the result equivalent, register it with lineage.

- `convert`: scikit-learn (and XGBoost/LightGBM) models to ONNX graphs taking the signature's inputs;
- `quantize`: dynamic int8 quantization of a graph;
- `data`: the rows equivalence is checked on;
- `equivalence`: the check and its report (`NotEquivalent` when it fails);
- `speed`: in-process milliseconds per call of source and optimized runtimes;
- `service`: `optimize(registry, ref, ...)`, what the CLI and any admin API call.
"""
