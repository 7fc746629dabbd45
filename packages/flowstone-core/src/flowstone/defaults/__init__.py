"""In-process default implementations of the plugin protocols (stores, IO managers, executors)."""
