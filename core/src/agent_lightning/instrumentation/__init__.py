"""The instrumentation API: training contexts, spans, rewards, and framework adapters."""
