"""The two-tower model: encoder, towers, losses, training, the bundle, catalogue embeddings and the index."""
