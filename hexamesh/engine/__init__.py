"""The inference engine: vLLM servers supervised per model, their load, a client."""
