"""Live streams the server watches (Jetson Platform Services' /api/v1/live-stream): each source is read by the
capture thread `caption --source` uses (capture.open_source: cameras, RTSP, files, GStreamer pipelines), and a
watcher keeps its newest sampled frames for chat requests and alert rules. A dropped network stream reconnects
with the capture's back-off; its state is reported."""

import os
import threading
import time
import uuid
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

from ..capture import open_source
from ..errors import VilaEdgeError
from ..record import Recorder
from .protocol import ApiError


@dataclass
class Stream:
    id: str
    url: str
    description: str
    window: int  # frames kept: a chat part's `window` takes up to this many
    source: object = None
    state: str = "connecting"  # connecting, live, ended, error (and reconnecting, from the capture, in to_json)
    error: str | None = None
    frames: deque = field(default_factory=deque)
    frame_count: int = 0
    started: float = field(default_factory=time.time)
    thread: threading.Thread | None = None
    recorder: object = None  # record.Recorder, with --record-dir

    def to_json(self) -> dict:
        source = self.source
        state = "reconnecting" if getattr(source, "reconnecting", False) else self.state
        return {"id": self.id, "liveStreamUrl": self.url, "description": self.description, "state": state,
                "error": self.error, "frames": self.frame_count,
                "reconnects": getattr(source, "reconnects", 0), "dropped_frames": getattr(source, "dropped", 0)}


class Streams:
    """The registry: add (opens the source before answering, so a bad URL is a 4xx), list, newest frames, remove."""

    def __init__(self, max_streams: int = 4, window: int = 8, fps: float = 2.0, reconnect_s: float = 3600.0, log=print,
                 record_dir: str | None = None):
        self.max_streams, self.window, self.fps, self.reconnect_s, self.log = max_streams, window, fps, reconnect_s, log
        self.record_dir = record_dir and Path(record_dir)
        self.streams: dict[str, Stream] = {}
        self.lock = threading.Lock()

    def add(self, url, description="") -> Stream:
        if not isinstance(url, str) or not url:
            raise ApiError(400, "'liveStreamUrl' must be a non-empty string", "liveStreamUrl", "invalid_value")
        if url.startswith("file://"):
            raise ApiError(400, "file:// URLs are not accepted; give a path, a camera, rtsp:// or a pipeline",
                           "liveStreamUrl", "url_not_allowed")
        with self.lock:
            if len(self.streams) >= self.max_streams:
                raise ApiError(409, f"this server watches at most {self.max_streams} streams; delete one first",
                               "liveStreamUrl", "too_many_streams")
        stream = Stream(uuid.uuid4().hex[:12], url, str(description or ""), self.window)
        stream.frames = deque(maxlen=self.window)
        try:
            stream.source = open_source(url, fps=self.fps, realtime=os.path.isfile(url),  # a file plays as if live
                                        reconnect_s=self.reconnect_s, log=self.log)
        except VilaEdgeError as e:
            raise ApiError(422, f"cannot open the stream: {e}", "liveStreamUrl", "stream_unavailable") from None
        if self.record_dir:  # every decoded frame, with the rule that holds drawn on it; a clip around each alert
            stream.recorder = Recorder(self.record_dir / f"{stream.id}.mp4", stream.source.fps, alerts=True)
            stream.source.tap = stream.recorder.write
        stream.thread = threading.Thread(target=self._watch, args=(stream,), name=f"stream {stream.id}", daemon=True)
        with self.lock:
            self.streams[stream.id] = stream
        stream.thread.start()
        return stream

    def _watch(self, stream: Stream) -> None:
        try:
            for frame in stream.source:
                stream.frames.append(frame)
                stream.frame_count += 1
                stream.state = "live"
                if stream.id not in self.streams:
                    break
            stream.state = "ended"
        except Exception as e:  # the capture's own error (a camera unplugged, a stream that did not come back)
            stream.state, stream.error = "error", str(e)

    def get(self, stream_id: str, param: str = "stream_id") -> Stream:
        stream = self.streams.get(stream_id) if isinstance(stream_id, str) else None
        if stream is None:
            raise ApiError(404, f"no live stream {stream_id!r}; GET /api/v1/live-stream lists them", param, "stream_not_found")
        return stream

    def newest(self, stream_id: str, count: int = 1, param: str = "stream_id") -> list:
        """The `count` newest frames' images, oldest first; a 409 while the stream has none yet."""
        stream = self.get(stream_id, param)
        frames = list(stream.frames)[-count:]
        if not frames:
            raise ApiError(409, f"live stream {stream_id} has no frame yet ({stream.state}); retry shortly", param,
                           "stream_not_ready", headers={"Retry-After": "1"})
        return [f.image for f in frames]

    def remove(self, stream_id: str) -> Stream:
        stream = self.get(stream_id)
        with self.lock:
            self.streams.pop(stream_id, None)
        if hasattr(stream.source, "close"):  # a live source's capture thread
            stream.source.close()
        if stream.recorder:
            stream.thread.join(timeout=10)  # a file or folder source's last frames
            stream.recorder.close()
        return stream

    def close(self) -> None:
        for stream_id in list(self.streams):
            self.remove(stream_id)
