"""geopin benchmarks on the real local control plane: `python -m bench [--smoke] [NAME ...]` (docs/performance.md)."""
