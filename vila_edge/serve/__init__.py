"""`vila-edge serve`: an OpenAI-compatible chat server over one loaded model (app.py), its request rules
(protocol.py), media decoding with limits (media.py), grammar-constrained JSON (grammar.py), the one worker that
owns the model (worker.py), the Prometheus metrics (metrics.py), and Jetson Platform Services' live streams and
alert rules (live.py, streams.py, alerts.py) with their events pushed out (notify.py)."""
