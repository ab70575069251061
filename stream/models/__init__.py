"""Parameter sets shipped with Touchstream."""
