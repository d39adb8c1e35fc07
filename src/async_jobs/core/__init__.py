"""The engine: registry, worker, executor, settings. Depends on ports, never on adapters."""
