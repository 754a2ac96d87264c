"""Live streams and alert rules on `vila-edge serve`, with Jetson Platform Services' bodies and event shape: a
stream added by URL, rules asked about its newest frame, events over the WebSocket and a webhook on loopback,
and a chat question about the stream's frame. The oracle is the same engine called directly on the same frame."""

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import numpy as np
import pytest
import websockets.sync.client as websockets_sync
from PIL import Image
from served import Running, free_port  # noqa: E402

from vila_edge.caption import Captioner  # noqa: E402
from vila_edge.generate import SamplingParams  # noqa: E402
from vila_edge.media import load_image  # noqa: E402
from vila_edge.runtime.cpu import CpuEngine  # noqa: E402
from vila_edge.serve.alerts import ANSWER, SYSTEM  # noqa: E402
from vila_edge.serve.grammar import GrammarTokenizer  # noqa: E402

CANDIDATES = ["Is there a person?", "Is it raining?", "Is there fire?", "Is the door open?", "Is a car parked?",
              "Is anyone running?", "Is there smoke?", "Is the light on?", "Is there a dog?", "Is it night?",
              "Is the road wet?", "Is a box on the floor?", "Is the gate closed?", "Is there snow?", "Is a truck here?"]


class Receiver(BaseHTTPRequestHandler):
    """A webhook on loopback: the first POST fails with 500 (the server must retry), the rest are kept."""

    posts: list = []
    failed_once = False

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        if not Receiver.failed_once:
            Receiver.failed_once = True
            self.send_response(500)
        else:
            Receiver.posts.append(body)
            self.send_response(200)
        self.end_headers()

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def webhook():
    server = ThreadingHTTPServer(("127.0.0.1", free_port()), Receiver)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/hook"
    server.shutdown()


@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    """A folder of one image: a stream of one frame, decoded exactly as the server will decode it."""
    folder = tmp_path_factory.mktemp("scene")
    Image.fromarray(np.random.default_rng(7).integers(0, 256, (48, 64, 3), dtype=np.uint8)).save(folder / "0.png")
    return folder


def answers(caption_engine, image, rules):
    """The engine's own constrained yes/no answer to each rule, called directly."""
    engine = CpuEngine(caption_engine, threads=1)
    captioner = Captioner(engine.info, engine)
    grammar = GrammarTokenizer(captioner.tokenizer, engine.vocab_size, sorted({engine.tokenizer.eos_token_id}))
    out = {}
    for rule in rules:
        params = SamplingParams(max_new_tokens=4, constraint=grammar.regex(ANSWER))
        out[rule] = captioner.chat(SYSTEM, [("user", rule)], [1], [image], params).text.strip().lower()
    return out, captioner


def test_a_rule_that_holds_is_pushed_to_the_websocket_and_the_webhook(caption_engine, scene, webhook, tmp_path):
    direct, captioner = answers(caption_engine, load_image(scene / "0.png"), CANDIDATES)
    yes = [r for r, a in direct.items() if a == "yes"]
    no = [r for r, a in direct.items() if a == "no"]
    assert yes and no, f"the tiny engine answers every candidate alike: {direct}"
    running = Running(caption_engine, alert_interval=0.1, webhook=webhook, record_dir=str(tmp_path))
    try:
        with websockets_sync.connect(f"ws://127.0.0.1:{running.settings.port}/api/v1/alerts/ws") as ws:
            stream_id = httpx.post(f"{running.url}/api/v1/live-stream",
                                   json={"liveStreamUrl": str(scene), "description": "door"}).json()["id"]
            listed = httpx.get(f"{running.url}/api/v1/live-stream").json()
            assert [(s["id"], s["liveStreamUrl"], s["description"]) for s in listed] == [(stream_id, str(scene), "door")]
            r = httpx.post(f"{running.url}/api/v1/alerts", json={"alerts": [yes[0], no[0]], "id": stream_id})
            assert r.status_code == 200 and [a["rule_string"] for a in r.json()["alerts"]] == [yes[0], no[0]]
            event = json.loads(ws.recv(timeout=30))
        assert {k: event[k] for k in ("title", "type", "rule_string", "stream_id", "state")} == {
            "title": "VLM Alert Triggered", "type": "vlm_alert", "rule_string": yes[0], "stream_id": stream_id,
            "state": True}
        assert event["description"] == f"Rule '{yes[0]}' is True!" and event["alert_id"].startswith("r")
        assert time.strptime(event["timestamp"], "%Y-%m-%d %H:%M:%S") and event["answer"].strip().lower() == "yes"
        deadline = time.time() + 30  # the webhook's first POST got a 500: it arrives on the retry
        while not Receiver.posts:
            assert time.time() < deadline, "the webhook never got the event"
            time.sleep(0.05)
        assert Receiver.posts[0] == event
        rules = {a["rule_string"]: a for a in httpx.get(f"{running.url}/api/v1/alerts").json()["alerts"]}
        assert rules[yes[0]]["state"] is True and rules[no[0]]["state"] is False
        assert 'vila_edge_alert_state{rule="' in httpx.get(f"{running.url}/metrics").text
        chat = httpx.post(f"{running.url}/v1/chat/completions", timeout=60, json={"max_tokens": 8, "messages": [
            {"role": "user", "content": [{"type": "stream", "stream": {"stream_id": stream_id}},
                                         {"type": "text", "text": "What is in view?"}]}]}).json()
        want = captioner.chat(None, [("user", "What is in view?")], [1], [load_image(scene / "0.png")],
                              SamplingParams(max_new_tokens=8))
        assert chat["choices"][0]["message"]["content"] == want.text
        assert chat["usage"]["prompt_tokens_details"]["image_tokens"] == want.image_tokens
        assert httpx.delete(f"{running.url}/api/v1/live-stream/{stream_id}").status_code == 200
        assert httpx.get(f"{running.url}/api/v1/alerts").json()["alerts"] == []  # its rules went with it
        assert event["clip"] == str(tmp_path / f"{stream_id}.alert-001.mp4")  # --record-dir: a clip per alert
        assert (tmp_path / f"{stream_id}.mp4").stat().st_size > 0 and Path(event["clip"]).stat().st_size > 0
    finally:
        running.stop()


def test_stream_and_rule_requests_are_checked(caption_engine, scene):
    running = Running(caption_engine, max_rules=2)
    try:
        post = lambda path, body: httpx.post(f"{running.url}{path}", json=body)  # noqa: E731
        assert post("/api/v1/live-stream", {"liveStreamUrl": str(scene / "missing")}).status_code == 422
        assert post("/api/v1/live-stream", {"liveStreamUrl": "file:///etc"}).json()["error"]["code"] == "url_not_allowed"
        assert post("/api/v1/alerts", {"alerts": ["x?"], "id": "nope"}).status_code == 404
        stream_id = post("/api/v1/live-stream", {"liveStreamUrl": str(scene)}).json()["id"]
        r = post("/api/v1/alerts", {"alerts": ["a?", "b?", "c?"], "id": stream_id})
        assert r.status_code == 400 and r.json()["error"]["code"] == "too_many_rules"
        assert post("/api/v1/alerts", {"alerts": ["x" * 101], "id": stream_id}).status_code == 400
        chat = {"messages": [{"role": "user", "content": [{"type": "stream", "stream": {"stream_id": "nope"}}]}]}
        assert post("/v1/chat/completions", chat).status_code == 404
        assert httpx.delete(f"{running.url}/api/v1/alerts/r99").status_code == 404
        assert httpx.delete(f"{running.url}/api/v1/live-stream/nope").status_code == 404
    finally:
        running.stop()


def rss_mb() -> float:
    return int(next(line for line in open("/proc/self/status") if line.startswith("VmRSS")).split()[1]) / 1024


def test_under_load_every_request_is_answered_or_refused_and_no_event_is_lost(caption_engine, scene, capsys):
    """16 clients, 200 requests (a quarter with an image) while an alert rule is evaluated: each gets 200 or 429
    within the client's 60 s, the process's memory stays flat, and the WebSocket saw every event the server kept."""
    from concurrent.futures import ThreadPoolExecutor

    from test_serve import jpeg_url

    direct, _ = answers(caption_engine, load_image(scene / "0.png"), CANDIDATES)
    yes = next(rule for rule, answer in direct.items() if answer == "yes")
    running = Running(caption_engine, alert_interval=0.1, max_queue=4)
    url, _ = jpeg_url(11)
    bodies = [{"max_tokens": 6, "messages": [{"role": "user", "content": [
        *([{"type": "image_url", "image_url": {"url": url}}] if i % 4 == 0 else []), {"type": "text", "text": f"Say {i}."}]}]}
        for i in range(200)]
    try:
        with websockets_sync.connect(f"ws://127.0.0.1:{running.settings.port}/api/v1/alerts/ws") as ws:
            stream_id = httpx.post(f"{running.url}/api/v1/live-stream", json={"liveStreamUrl": str(scene)}).json()["id"]
            httpx.post(f"{running.url}/api/v1/alerts", json={"alerts": [yes], "id": stream_id})
            with httpx.Client(timeout=60) as client, ThreadPoolExecutor(16) as pool:
                post = lambda body: client.post(f"{running.url}/v1/chat/completions", json=body).status_code  # noqa: E731
                warm = list(pool.map(post, bodies[:50]))
                before = rss_mb()
                codes = warm + list(pool.map(post, bodies[50:]))
                after = rss_mb()
            kept = httpx.get(f"{running.url}/api/v1/alerts/events").json()["events"]
            seen = [json.loads(ws.recv(timeout=10)) for _ in kept]
        assert set(codes) <= {200, 429} and codes.count(200) >= 16, sorted(set(codes))
        assert kept and seen == kept
        assert after - before < 64, f"RSS grew {after - before:.1f} MB over 150 requests"
        with capsys.disabled():
            print(f"\n[load: {codes.count(200)} answered, {codes.count(429)} refused with 429; RSS {before:.0f} -> "
                  f"{after:.0f} MB over the last 150 requests]")
    finally:
        running.stop()
