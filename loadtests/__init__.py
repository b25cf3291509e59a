"""Long-prompt load generation against any OpenAI-compatible server, over HTTP only.

It imports nothing of the server it measures, so the same run measures this project's server
and vLLM's own alike.
"""
