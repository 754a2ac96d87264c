"""One orchestrator per command: the only layer that crosses stages (model, quant, export, runtime)."""
