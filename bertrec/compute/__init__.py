"""Where the heavy stages run: this process, or a Ray cluster (``compute.engine`` in params.yaml)."""
