"""Serving: the Recommender over a bundle, and the same as an MLflow pyfunc model."""
