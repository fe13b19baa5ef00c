"""MLOps: MLflow tracking and registry, the promotion gate, drift monitoring, the replay, the local stack."""
