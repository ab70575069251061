"""Event generation, load drivers and benchmarks for Touchstream."""
