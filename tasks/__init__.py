"""Stage logic: pure functions with thin Prefect wrappers at the bottom of each module."""
