"""Components that act over time: reconciler, monitors, status reporter, syncs. Imports core and io."""
