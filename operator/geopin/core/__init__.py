"""Pure logic: decisions from policies, workloads and replica health. Imports nothing else of geopin."""
