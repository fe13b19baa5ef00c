"""bertrec: language-model recommendations with an MLOps pipeline."""
