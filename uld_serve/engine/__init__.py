"""ULD inside vLLM: the wrapper model, its logits processor and the offline engine."""
