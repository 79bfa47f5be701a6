"""Built-in pruning methods, registered through the `sparsebench.methods` entry-point group in
pyproject.toml exactly as a third-party plugin would be."""
