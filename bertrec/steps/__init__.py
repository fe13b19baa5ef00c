"""One module per dvc.yaml stage: ``run(params) -> result``, called alike by the CLI and the flows."""
