"""Drift: Evidently checks of interactions, embeddings and predictions, and the champion's monitor."""
