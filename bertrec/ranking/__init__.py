"""Ranking: the Scorer interface, the protocol's metrics, evaluation, baselines and their result files."""
