"""Data: sources and their formats, validation, item text, the prepared dataset and the splits."""
