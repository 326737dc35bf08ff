"""Question generators (the offline one and the OpenAI-compatible LLM client), the shared rate
budget of a provider's key, and what calls cost."""
