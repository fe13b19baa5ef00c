"""Prefect flows: wiring only; the decisions live in the bertrec library."""
