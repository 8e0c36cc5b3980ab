"""`uld serve`: vLLM's own OpenAI-compatible server with the ULD wrapper model, plus a
middleware (auth, forget set and alpha per request) and routes (forget-set registry)."""
