"""The leaf layer: helpers every other layer may use; it imports nothing else from honed."""
