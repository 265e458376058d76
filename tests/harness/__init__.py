"""geopin's local test harness: a real control plane, real registries, real faults (see docs/architecture.md)."""
