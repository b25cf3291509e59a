"""resonance-eval: long-context quality of any OpenAI-compatible server, over HTTP only."""
