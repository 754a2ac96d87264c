"""Where alert events go: every WebSocket subscriber, a webhook (POSTed JSON, retried with back-off, a bounded
backlog), MQTT (QoS 1, paho-mqtt), and a short history for GET /api/v1/alerts/events. A slow or dead receiver
never holds the others up: each has its own queue and drops its oldest event when full."""

import asyncio
import json
import threading
import urllib.parse
import urllib.request
from collections import deque

BACKLOG = 256  # events one receiver may fall behind by


class Notifier:
    def __init__(self, webhook: str | None = None, mqtt: str | None = None, history: int = 100, log=print):
        self.subscribers: set[asyncio.Queue] = set()
        self.history: deque = deque(maxlen=history)
        self.log = log
        self.sent = {"websocket": 0, "webhook": 0, "mqtt": 0}
        self.failed = {"webhook": 0, "mqtt": 0}
        self.webhook = webhook and Retrying(webhook, self._posted, log)
        self.mqtt = mqtt and MqttPublisher(mqtt, self, log)

    def _posted(self, ok: bool) -> None:
        if ok:
            self.sent["webhook"] += 1
        else:
            self.failed["webhook"] += 1

    def subscribe(self) -> asyncio.Queue:
        q = asyncio.Queue(maxsize=BACKLOG)
        self.subscribers.add(q)
        return q

    def unsubscribe(self, q: asyncio.Queue) -> None:
        self.subscribers.discard(q)

    def publish(self, event: dict) -> None:
        """On the event loop: to every subscriber's queue, the webhook's and MQTT's."""
        self.history.append(event)
        for q in list(self.subscribers):
            if q.full():
                q.get_nowait()  # a subscriber that does not read loses its oldest event, not the server its memory
            q.put_nowait(event)
        if self.webhook:
            self.webhook.put(event)
        if self.mqtt:
            self.mqtt.put(event)

    def close(self) -> None:
        for sender in (self.webhook, self.mqtt):
            if sender:
                sender.close()


class Retrying:
    """A webhook: its own thread POSTs each event as JSON; a failure is retried after 0.5, 1, 2, 4 s, then dropped."""

    DELAYS = (0.5, 1.0, 2.0, 4.0)

    def __init__(self, url: str, done, log, timeout_s: float = 5.0):
        if urllib.parse.urlsplit(url).scheme not in ("http", "https"):
            raise ValueError(f"--webhook {url}: an http(s) URL")
        self.url, self.done, self.log, self.timeout_s = url, done, log, timeout_s
        self.queue: deque = deque(maxlen=BACKLOG)
        self.ready, self.stopping = threading.Condition(), False
        self.thread = threading.Thread(target=self._run, name="webhook", daemon=True)
        self.thread.start()

    def put(self, event: dict) -> None:
        with self.ready:
            self.queue.append(event)
            self.ready.notify()

    def _post(self, event: dict) -> None:
        body = json.dumps(event).encode()
        request = urllib.request.Request(self.url, body, {"Content-Type": "application/json"}, method="POST")
        with urllib.request.urlopen(request, timeout=self.timeout_s) as r:  # noqa: S310 (scheme checked)
            if r.status >= 300:
                raise OSError(f"HTTP {r.status}")

    def _run(self) -> None:
        while True:
            with self.ready:
                while not self.queue and not self.stopping:
                    self.ready.wait()
                if self.stopping and not self.queue:
                    return
                event = self.queue.popleft()
            for delay in (*self.DELAYS, None):
                try:
                    self._post(event)
                    self.done(True)
                    break
                except OSError as e:
                    if delay is None or self.stopping:
                        self.log(f"webhook {self.url}: event dropped after {len(self.DELAYS) + 1} tries ({e})")
                        self.done(False)
                        break
                    with self.ready:
                        self.ready.wait(delay)

    def close(self) -> None:
        with self.ready:
            self.stopping = True
            self.ready.notify()
        self.thread.join(timeout=10)


class MqttPublisher:
    """mqtt://HOST:PORT/TOPIC through paho-mqtt: QoS 1, reconnecting in paho's own loop thread."""

    def __init__(self, url: str, notifier: Notifier, log):
        from paho.mqtt import client as mqtt

        u = urllib.parse.urlsplit(url)
        if u.scheme != "mqtt" or not u.hostname or not u.path.strip("/"):
            raise ValueError(f"--mqtt {url}: expected mqtt://HOST[:PORT]/TOPIC")
        self.topic, self.notifier, self.log = u.path.strip("/"), notifier, log
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"vila-edge-{id(self):x}")
        if u.username:
            self.client.username_pw_set(u.username, u.password)
        self.client.reconnect_delay_set(1, 30)
        self.client.max_queued_messages_set(BACKLOG)  # QoS 1 messages wait for a reconnect, within the backlog
        self.client.connect_async(u.hostname, u.port or 1883)
        self.client.loop_start()

    def put(self, event: dict) -> None:
        info = self.client.publish(self.topic, json.dumps(event), qos=1)
        if info.rc == 0:
            self.notifier.sent["mqtt"] += 1
        else:
            self.notifier.failed["mqtt"] += 1

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()
