"""`vila-edge serve`: an OpenAI-compatible chat server over one loaded model (serve/app.py), its request rules
(protocol.py), media decoding with limits (media.py), grammar-constrained JSON (grammar.py), the one worker that
owns the model (worker.py) and the Prometheus metrics (metrics.py)."""
