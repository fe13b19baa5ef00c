"""Prefect tasks: one library or DVC call each, with its retries, timeout and logs."""
