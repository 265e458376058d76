"""The edges: the Kubernetes API, registries, Azure, the webhook's HTTPS server, metrics. Imports core only."""
