"""The server's Prometheus metrics (prometheus-client), in a registry of its own (one per app)."""

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

SECONDS = (0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 120)


class Metrics:
    def __init__(self):
        self.registry = r = CollectorRegistry()
        self.requests = Counter("vila_edge_requests", "HTTP requests by route and status", ["route", "status"], registry=r)
        self.queue_depth = Gauge("vila_edge_queue_depth", "generation jobs waiting or running", registry=r)
        self.ttft = Histogram("vila_edge_ttft_seconds", "time to first token, vision included", buckets=SECONDS, registry=r)
        self.decode = Histogram("vila_edge_decode_tokens_per_second", "decode speed per request",
                                buckets=(1, 2, 5, 10, 20, 50, 100, 200, 500), registry=r)
        self.image_tokens = Counter("vila_edge_image_tokens", "image tokens prefilled", registry=r)
        self.completion_tokens = Counter("vila_edge_completion_tokens", "tokens generated", registry=r)
        self.alert_state = Gauge("vila_edge_alert_state", "each alert rule's last answer: 1 yes, 0 no, -1 neither",
                                 ["rule"], registry=r)
        self.cancelled = Counter("vila_edge_cancelled", "generations stopped because their client left", registry=r)

    def answered(self, answer) -> None:
        self.ttft.observe(answer.ttft_s)
        if answer.decode_tok_s > 0:
            self.decode.observe(answer.decode_tok_s)
        self.image_tokens.inc(answer.image_tokens)
        self.completion_tokens.inc(answer.completion_tokens)

    def render(self) -> bytes:
        return generate_latest(self.registry)
