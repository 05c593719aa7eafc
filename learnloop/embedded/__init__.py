"""The embedded stack of ``learnloop up`` and the tests: a broker process on loopback."""
