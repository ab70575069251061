"""The steps of the Touchstream dataflow, as plain classes with no bytewax
import: decode and validate, dedupe, and the key-group actor. ``stream/``
wires them into a bytewax dataflow."""
