"""Serving: the OpenAI-compatible front door, routing, forwarding, jobs."""
