"""learnloop: continuous, versioned memory for LLM agents, learned from their feedback."""
