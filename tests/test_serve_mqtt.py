"""Alert events over MQTT: Debian's mosquitto started on a free loopback port (installed by `make test` where it runs
as root; skipped elsewhere with the install line), the server publishing at QoS 1, a paho-mqtt subscriber."""

import json
import queue
import shutil
import socket
import subprocess
import time
from pathlib import Path

import httpx
import paho.mqtt.client as mqtt
import pytest
from served import Running, free_port  # noqa: E402
from test_serve_live import CANDIDATES, answers, scene  # noqa: E402, F401 (scene: the fixture)

from vila_edge.media import load_image  # noqa: E402

MOSQUITTO = shutil.which("mosquitto") or ("/usr/sbin/mosquitto" if Path("/usr/sbin/mosquitto").exists() else None)


@pytest.fixture(scope="module")
def broker(tmp_path_factory):
    if MOSQUITTO is None:
        pytest.skip("needs Debian's MQTT broker: apt-get install mosquitto (make test installs it as root)")
    port, folder = free_port(), tmp_path_factory.mktemp("mosquitto")
    (folder / "mosquitto.conf").write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n")
    proc = subprocess.Popen([MOSQUITTO, "-c", str(folder / "mosquitto.conf")], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.time() + 10
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            break
        except OSError:
            assert time.time() < deadline and proc.poll() is None, "mosquitto did not start"
            time.sleep(0.05)
    yield port
    proc.terminate()
    proc.wait(timeout=10)


def test_alert_events_are_published_at_qos_1(caption_engine, scene, broker):  # noqa: F811
    direct, _ = answers(caption_engine, load_image(scene / "0.png"), CANDIDATES)
    yes = next(rule for rule, answer in direct.items() if answer == "yes")
    got: queue.Queue = queue.Queue()
    subscriber = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
    subscriber.on_message = lambda client, data, message: got.put((message.topic, message.qos, message.payload))
    subscriber.connect("127.0.0.1", broker)
    subscriber.subscribe("site/alerts", qos=1)
    subscriber.loop_start()
    running = Running(caption_engine, alert_interval=0.1, mqtt=f"mqtt://127.0.0.1:{broker}/site/alerts")
    try:
        stream_id = httpx.post(f"{running.url}/api/v1/live-stream", json={"liveStreamUrl": str(scene)}).json()["id"]
        assert httpx.post(f"{running.url}/api/v1/alerts", json={"alerts": [yes], "id": stream_id}).status_code == 200
        topic, qos, payload = got.get(timeout=30)
        event = json.loads(payload)
        assert (topic, qos) == ("site/alerts", 1)
        assert (event["type"], event["rule_string"], event["stream_id"], event["state"]) == ("vlm_alert", yes, stream_id, True)
        assert httpx.get(f"{running.url}/api/v1/alerts/events").json()["sent"]["mqtt"] == 1
    finally:
        running.stop()
        subscriber.loop_stop()
