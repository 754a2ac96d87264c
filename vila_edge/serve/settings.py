"""What `vila-edge serve` is started with (its options, one field each) and the limits its parts read. Plain
dataclasses: the command line is built from them without importing the server's packages."""

from dataclasses import dataclass


@dataclass
class Limits:
    max_images: int = 8  # per request, video frames included
    max_tokens: int = 1024  # the most a request may ask for (the model's context caps it further)
    max_frames: int = 16  # a video_url's frames at most
    max_messages: int = 100


@dataclass
class MediaPolicy:
    max_bytes: int = 20 << 20  # one image or video
    max_pixels: int = 40_000_000  # width x height of one image, checked before decoding
    allow_url_fetch: bool = False
    allow_private_urls: bool = False
    fetch_timeout_s: float = 10.0
    default_frames: int = 8


@dataclass
class ServeSettings:
    host: str = "127.0.0.1"
    port: int = 8000
    api_key: str | None = None
    max_queue: int = 8  # requests waiting behind the running one; more get 429
    default_max_tokens: int = 256
    max_images: int = Limits.max_images
    max_tokens: int = Limits.max_tokens
    max_frames: int = Limits.max_frames
    max_body_bytes: int = 32 << 20
    max_image_bytes: int = MediaPolicy.max_bytes
    max_pixels: int = MediaPolicy.max_pixels
    allow_url_fetch: bool = False
    allow_private_urls: bool = False
    fetch_timeout_s: float = MediaPolicy.fetch_timeout_s
    max_streams: int = 4
    stream_fps: float = 2.0  # frames per second a watched stream keeps (the newest win)
    stream_window: int = 8  # frames kept per stream: a chat's stream part may take that many
    alert_interval: float = 2.0
    alert_cooldown: float = 60.0
    max_rules: int = 10
    webhook: str | None = None
    mqtt: str | None = None
    record_dir: str | None = None  # each live stream recorded there, with a clip around each alert

    @property
    def limits(self) -> Limits:
        return Limits(self.max_images, self.max_tokens, self.max_frames)

    @property
    def media(self) -> MediaPolicy:
        return MediaPolicy(self.max_image_bytes, self.max_pixels, self.allow_url_fetch, self.allow_private_urls,
                           self.fetch_timeout_s, min(MediaPolicy.default_frames, self.max_frames))


SERVER_FIELDS = ("host", "port", "api_key", "max_queue", "default_max_tokens")
LIMIT_FIELDS = ("max_images", "max_tokens", "max_frames", "max_body_bytes", "max_image_bytes", "max_pixels")
MEDIA_FIELDS = ("allow_url_fetch", "allow_private_urls", "fetch_timeout_s")
LIVE_FIELDS = ("max_streams", "stream_fps", "stream_window", "alert_interval", "alert_cooldown", "max_rules", "webhook",
               "mqtt", "record_dir")
HELP = {
    "host": "address to bind; anything but loopback needs --api-key",
    "port": "TCP port",
    "api_key": "require Authorization: Bearer KEY (default: $VILA_EDGE_API_KEY)",
    "max_queue": "requests waiting behind the running one; more are answered 429",
    "default_max_tokens": "tokens per answer when a request names no max_tokens",
    "max_images": "images (video frames included) per request",
    "max_tokens": "the most max_tokens a request may ask for",
    "max_frames": "frames a video_url may ask for",
    "max_body_bytes": "request body size",
    "max_image_bytes": "one decoded image or video",
    "max_pixels": "width x height of one image (larger ones are refused before decoding)",
    "allow_url_fetch": "fetch http(s) image and video URLs (off: data: URLs only)",
    "allow_private_urls": "with --allow-url-fetch, also loopback and private addresses",
    "fetch_timeout_s": "seconds a URL fetch may take",
    "max_streams": "live streams watched at once (POST /api/v1/live-stream)",
    "stream_fps": "frames per second kept from each live stream",
    "stream_window": "newest frames kept per stream (a chat's stream part takes up to this many)",
    "alert_interval": "seconds between evaluations of each alert rule",
    "alert_cooldown": "seconds before a rule that turned true again is announced again",
    "max_rules": "alert rules per stream",
    "webhook": "POST each alert event as JSON to this http(s) URL (retried with back-off)",
    "mqtt": "publish each alert event to mqtt://HOST[:PORT]/TOPIC at QoS 1 (needs paho-mqtt)",
    "record_dir": "record each live stream to DIR/STREAM_ID.mp4 with the rule that holds drawn on it, and a clip around "
    "each alert (DIR/STREAM_ID.alert-001.mp4, ...; its path is in the event)",
}
