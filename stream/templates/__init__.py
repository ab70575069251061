"""Health templates shipped with Touchstream, one TOML file per industry."""
