"""The edges and the wiring of Touchstream: sources, the bytewax dataflow,
outputs, configuration and the ``touchstream`` command."""
