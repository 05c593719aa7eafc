"""Benchmarks on the real pipeline (``learnloop bench ...``): quality and performance."""
