"""The wire-facing code the front and its clients share: the proto <-> domain conversions both
sides make, and the names on the wire (the reason metadata key, the conventional address).

It imports the core, the batch domain's pure result records and the generated stubs; never the
front, the worker or Redis, so that a client can use it without them (tests/test_layers.py)."""
