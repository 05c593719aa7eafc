"""The user simulator: scenario files, a seeded generator, and sinks (Kafka, HTTP)."""
