"""Live RTSP through the loop, against a real server on 127.0.0.1: GStreamer's rtsp-server
(tests/rtsp_server.py, installed by `make test`), including the server restarting mid-stream."""

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

SERVER = Path(__file__).with_name("rtsp_server.py")
URL = "rtsp://127.0.0.1:8554/live"
SYSTEM_PYTHON = "/usr/bin/python3"


def _server_missing() -> str | None:
    try:
        check = subprocess.run([SYSTEM_PYTHON, SERVER, "--check"], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"{SYSTEM_PYTHON}: {e}"
    return None if check.returncode == 0 else (check.stderr.strip().splitlines() or ["?"])[-1]


missing = _server_missing()
pytestmark = pytest.mark.skipif(missing is not None, reason=f"GStreamer RTSP server not installed ({missing}); make rtsp-server")


class Server:
    """tests/rtsp_server.py in a process of its own, which a test can stop and start again."""

    def __init__(self, *args: str):
        self.proc, self.args = None, args or ("--port", "8554")

    def start(self) -> None:
        self.proc = subprocess.Popen([SYSTEM_PYTHON, SERVER, *self.args], stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True)
        line = self.proc.stdout.readline().strip()
        if line != "ready":
            self.proc.kill()
            pytest.fail(f"the RTSP server did not start: {self.proc.stderr.read()}")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=10)


@pytest.fixture
def server():
    s = Server()
    s.start()
    yield s
    s.stop()


@pytest.fixture
def engine(caption_engine):
    return caption_engine


def test_captions_from_an_rtsp_stream(server, engine, cli):
    code, out, err = cli("caption", engine, "--source", URL, "--every", 10, "--max-captions", 2,
                         "--prompt", "Describe the image.", "--max-new-tokens", 3, "--format", "jsonl")
    assert code == 0, err
    got = [json.loads(line) for line in out.splitlines()]
    assert len(got) == 2 and all(r["source"] == URL and r["token_ids"] for r in got)
    assert all(r["frame_index"] % 10 == 0 for r in got) and got[0]["frame_index"] < got[1]["frame_index"]
    assert got[0]["timestamp"] < got[1]["timestamp"]
    assert "2 captions; " in err and "dropped while the model was busy" in err  # the summary on stderr


def test_the_stream_comes_back_after_the_server_restarts(server, captioner, monkeypatch):
    """The server is stopped after two captions and started again 1.5 s later: the loop reconnects
    by itself and goes on, its frame numbers and clock carrying on from before."""
    import os

    monkeypatch.delenv("OPENCV_FFMPEG_CAPTURE_OPTIONS", raising=False)
    from vila_edge.capture import caption_frames, open_source
    from vila_edge.generate import SamplingParams

    log: list[str] = []
    source = open_source(URL, every=5, reconnect_s=20, log=log.append)
    loop = caption_frames(captioner(), source, "Describe the image.", SamplingParams(max_new_tokens=2))
    got = [next(loop), next(loop)]
    server.stop()
    time.sleep(1.5)
    server.start()
    got += [next(loop) for _ in range(3)]
    loop.close()
    assert not source._thread.is_alive()  # closing the loop stops the capture thread
    indices = [r["frame_index"] for r in got]
    assert indices == sorted(indices) and len(set(indices)) == 5
    assert got[-1]["reconnects"] == 1 and "reconnects" not in got[0]
    assert any("stream lost" in m for m in log) and any("reconnected" in m for m in log)
    # the low-latency options were set for the stream's opens only: left set, they cut files short
    assert "OPENCV_FFMPEG_CAPTURE_OPTIONS" not in os.environ


def test_a_stream_that_does_not_come_back_ends_with_an_error(server):
    from vila_edge.capture import open_source
    from vila_edge.errors import MediaError

    source = open_source(URL, reconnect_s=2, log=lambda m: None)
    frames = iter(source)
    next(frames)
    server.stop()
    t0 = time.monotonic()
    with pytest.raises(MediaError, match="did not come back within 2 s"):
        for _ in frames:
            pass
    assert time.monotonic() - t0 < 15
    source.close()


@pytest.mark.parametrize("url", ["rtsp://127.0.0.1:8555/live", "rtsp://127.0.0.1:8554/nothing-here"])
def test_an_unreachable_stream_fails_clearly(url, server, engine, cli):
    t0 = time.monotonic()
    code, out, err = cli("caption", engine, "--source", url, "--prompt", "hi")
    assert code == 1 and out == "" and "cannot connect to the stream" in err and "Traceback" not in err
    assert time.monotonic() - t0 < 15


def test_the_cli_stops_cleanly_on_ctrl_c(server, engine, tmp_path):
    """SIGINT to a running `vila-edge caption --source rtsp://...`: exit 130, the JSONL lines so far
    intact, and the --record file finalised (a playable video, no partial file left)."""
    import signal

    import cv2

    out = tmp_path / "live.mp4"
    proc = subprocess.Popen([sys.executable, "-m", "vila_edge.cli", "caption", str(engine), "--source", URL,
                             "--prompt", "Describe the image.", "--max-new-tokens", "2", "--format", "jsonl",
                             "--record", str(out)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    first = proc.stdout.readline()
    time.sleep(1.0)
    proc.send_signal(signal.SIGINT)
    rest, err = proc.communicate(timeout=30)
    assert proc.returncode == 130, err
    assert "interrupted" in err and "Traceback" not in err
    lines = [first] + rest.splitlines()
    assert all(json.loads(line)["source"] == URL for line in lines if line.strip())
    cap = cv2.VideoCapture(str(out))
    assert cap.isOpened() and cap.get(cv2.CAP_PROP_FRAME_COUNT) > 10
    assert [p.name for p in tmp_path.iterdir()] == ["live.mp4"]


def test_a_stream_joined_between_far_apart_keyframes_waits_for_the_next_one():
    """x264's default GOP (250 frames) at 15 fps: a keyframe every ~17 s. A first viewer starts the shared stream;
    ours joins 3 s later, sees nothing decodable for ~14 s, and must wait for the keyframe instead of reconnecting
    in a loop every 5 s read timeout (each new connection would join between keyframes again)."""
    import threading

    import cv2

    from vila_edge.capture import open_source

    server = Server("--port", "8555", "--fps", "15", "--gop", "250")
    server.start()
    url, stop = "rtsp://127.0.0.1:8555/live", threading.Event()

    def watch():  # the first viewer, on its own thread from open to release (OpenCV captures are not thread-safe)
        viewer = cv2.VideoCapture(url, cv2.CAP_FFMPEG)
        while not stop.is_set() and viewer.read()[0]:
            pass
        viewer.release()

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        time.sleep(3)
        log: list[str] = []
        source, got = open_source(url, reconnect_s=60, log=log.append), []
        reader = threading.Thread(target=lambda: got.append(next(iter(source))), daemon=True)
        reader.start()
        reader.join(timeout=60)  # keyframes are ~17 s apart
        source.close()
        assert got and got[0].image.size == (320, 240), f"no frame in 60 s: {log}"
        # it waited on its connection; OpenCV's FFmpeg capture gives up on one after two read timeouts (its next read
        # fails at once), and the new one waits again: a frame within a GOP or two, not a loop of 5 s reconnects
        assert source.reconnects <= 3 and any("waiting for a keyframe" in line for line in log), log
    finally:
        stop.set()
        watcher.join(timeout=60)
        server.stop()


def test_the_server_watches_an_rtsp_stream_and_answers_about_its_newest_frame(server, caption_engine):
    """`vila-edge serve`'s live-stream layer on the real RTSP server: the stream goes live and a chat part takes its
    newest frame (one image block of the engine's size)."""
    import httpx
    from served import Running

    running = Running(caption_engine)
    try:
        stream_id = httpx.post(f"{running.url}/api/v1/live-stream", json={"liveStreamUrl": URL}).json()["id"]
        deadline = time.time() + 30
        while (state := httpx.get(f"{running.url}/api/v1/live-stream").json()[0])["state"] != "live":
            assert time.time() < deadline and state["state"] == "connecting", state
            time.sleep(0.1)
        r = httpx.post(f"{running.url}/v1/chat/completions", timeout=60, json={"max_tokens": 3, "messages": [
            {"role": "user", "content": [{"type": "stream", "stream": {"stream_id": stream_id}},
                                         {"type": "text", "text": "What moves?"}]}]})
        assert r.status_code == 200 and r.json()["usage"]["prompt_tokens_details"]["image_tokens"] > 0
        assert state["frames"] > 0 and state["liveStreamUrl"] == URL
        server.stop()  # the camera goes away: the stream says so, reconnects with back-off, and comes back live
        states = {"live"}
        deadline = time.time() + 30
        while "reconnecting" not in states:
            assert time.time() < deadline, states
            states.add(httpx.get(f"{running.url}/api/v1/live-stream").json()[0]["state"])
            time.sleep(0.1)
        server.start()
        while (state := httpx.get(f"{running.url}/api/v1/live-stream").json()[0])["state"] != "live" or \
                not state["reconnects"]:
            assert time.time() < deadline + 30, state
            time.sleep(0.1)
    finally:
        running.stop()
