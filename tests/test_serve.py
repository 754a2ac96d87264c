"""`vila-edge serve` over a real uvicorn server on a free 127.0.0.1 port, with the real `openai` SDK as the client.
The oracle for every answer is the same engine called directly (Captioner.chat): the server must add nothing."""

import base64
import io
import json
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import openai
import pytest
from PIL import Image
from served import Running, SlowDecode  # noqa: E402

from vila_edge.caption import Captioner  # noqa: E402
from vila_edge.generate import SamplingParams  # noqa: E402
from vila_edge.runtime.cpu import CpuEngine  # noqa: E402


@pytest.fixture(scope="module")
def served(caption_engine):
    running = Running(caption_engine)
    yield running
    running.stop()


@pytest.fixture(scope="module")
def direct(caption_engine):
    """The oracle: the same engine folder, called without the server."""
    engine = CpuEngine(caption_engine, threads=1)
    return Captioner(engine.info, engine)


def jpeg_url(seed: int, size=(64, 48)) -> tuple[str, Image.Image]:
    im = Image.fromarray(np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))
    buf = io.BytesIO()
    im.save(buf, "JPEG", quality=90)
    data = buf.getvalue()
    return "data:image/jpeg;base64," + base64.b64encode(data).decode(), Image.open(io.BytesIO(data)).convert("RGB")


def oracle(direct, turns, images=(), counts=None, system=None, max_tokens=12, stop=()):
    """The direct answer; its `streamed` attribute: the text pieces as the engine handed them out."""
    params, pieces = SamplingParams(max_new_tokens=max_tokens), []
    answer = direct.chat(system, turns, counts or [len(images)] + [0] * (len(turns) - 1), list(images), params,
                         pieces.append, stop=stop)
    answer.streamed = "".join(pieces)
    return answer


def test_a_text_question_is_answered_as_the_engine_answers_it(served, direct):
    r = served.client().chat.completions.create(model="whatever-the-client-sends", max_tokens=12,
                                                messages=[{"role": "user", "content": "Describe a cat."}])
    want = oracle(direct, [("user", "Describe a cat.")])
    assert r.choices[0].message.content == want.text and r.choices[0].message.role == "assistant"
    assert r.choices[0].finish_reason == {"stop": "stop", "length": "length"}[want.stop_reason]
    assert (r.usage.prompt_tokens, r.usage.completion_tokens) == (want.prompt_tokens, want.completion_tokens)
    assert r.usage.total_tokens == want.prompt_tokens + want.completion_tokens and r.model == served.name
    assert set(r.model_extra["timings"]) == {"ttft_ms", "vision_ms", "decode_tok_s"}


def test_images_system_prompts_and_earlier_turns_are_spliced_as_the_template_does(served, direct):
    (a_url, a), (b_url, b) = jpeg_url(1), jpeg_url(2, (40, 70))
    messages = [
        {"role": "system", "content": "Answer briefly."},
        {"role": "user", "content": [{"type": "text", "text": "What is here?"}, {"type": "image_url", "image_url": {"url": a_url}},
                                     {"type": "image_url", "image_url": b_url}]},  # a bare string, as Ollama sends it
        {"role": "assistant", "content": "Two pictures."},
        {"role": "user", "content": [{"type": "text", "text": "And now?"}]},
    ]
    r = served.client().chat.completions.create(model="m", messages=messages, max_tokens=10)
    want = oracle(direct, [("user", "What is here?"), ("assistant", "Two pictures."), ("user", "And now?")], [a, b],
                  counts=[2, 0, 0], system="Answer briefly.", max_tokens=10)
    assert r.choices[0].message.content == want.text
    assert r.usage.prompt_tokens == want.prompt_tokens and r.usage.prompt_tokens_details.image_tokens == want.image_tokens > 0


def test_streaming_sends_role_first_finish_last_then_usage_and_done(served, direct):
    url, im = jpeg_url(3)
    content = [{"type": "image_url", "image_url": {"url": url}}, {"type": "text", "text": "Describe."}]
    chunks = list(served.client().chat.completions.create(
        model="m", messages=[{"role": "user", "content": content}], max_tokens=12, stream=True,
        stream_options={"include_usage": True}))
    want = oracle(direct, [("user", "Describe.")], [im])
    assert chunks[0].choices[0].delta.role == "assistant"
    assert [c.choices[0].finish_reason for c in chunks[:-1]][-1] in ("stop", "length")
    assert all(c.choices[0].finish_reason is None for c in chunks[:-2])
    assert chunks[-1].choices == [] and chunks[-1].usage.prompt_tokens == want.prompt_tokens
    assert "".join(c.choices[0].delta.content or "" for c in chunks[:-1]) == want.streamed
    with httpx.stream("POST", f"{served.url}/chat/completions", timeout=60,  # VILA's own path, without /v1
                      json={"model": "m", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2, "stream": True}) as r:
        lines = [line for line in r.iter_lines() if line]
    assert lines[-1] == "data: [DONE]" and all(line.startswith("data: ") for line in lines)


def test_a_json_schema_answer_parses_and_follows_the_schema(served):
    schema = {"type": "object", "additionalProperties": False, "required": ["person", "color"],
              "properties": {"person": {"type": "boolean"}, "color": {"enum": ["red", "green", "blue"]}}}
    for fmt in ({"type": "json_schema", "json_schema": {"name": "alert", "strict": True, "schema": schema}},
                {"type": "json_schema", "schema": schema}):  # the nested form and llama.cpp's top-level one
        r = served.client().chat.completions.create(model="m", messages=[{"role": "user", "content": "Is there a person?"}],
                                                    max_tokens=40, response_format=fmt)
        answer = json.loads(r.choices[0].message.content)
        assert set(answer) == {"person", "color"} and isinstance(answer["person"], bool) and answer["color"] in schema[
            "properties"]["color"]["enum"]
    r = served.client().chat.completions.create(model="m", messages=[{"role": "user", "content": "JSON please"}],
                                                max_tokens=60, response_format={"type": "json_object"})
    assert r.choices[0].finish_reason == "length" or isinstance(json.loads(r.choices[0].message.content), dict)


def test_a_video_url_is_sampled_as_caption_video_samples_it(served, direct, tmp_path):
    import cv2

    from vila_edge.media import load_video_frames

    path = tmp_path / "clip.mp4"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 10, (64, 48))
    for i in range(12):
        writer.write(np.full((48, 64, 3), 20 * i, np.uint8))
    writer.release()
    url = "data:video/mp4;base64," + base64.b64encode(path.read_bytes()).decode()
    r = served.client().chat.completions.create(model="m", max_tokens=6, messages=[{"role": "user", "content": [
        {"type": "video_url", "video_url": {"url": url, "frames": 3}}, {"type": "text", "text": "What happens?"}]}])
    want = oracle(direct, [("user", "What happens?")], load_video_frames(path, 3), max_tokens=6)
    assert r.choices[0].message.content == want.text and r.usage.prompt_tokens_details.image_tokens == want.image_tokens


def post(served, body, headers=None, raw: bytes | None = None):
    return httpx.post(f"{served.url}/v1/chat/completions", timeout=60, headers=headers,
                      **({"content": raw} if raw is not None else {"json": body}))


BAD = [  # (body, status, the error's param or code)
    ({"model": "m", "messages": []}, 400, "messages"),
    ({"model": "m", "messages": [{"role": "tool", "content": "x"}]}, 400, "messages[0].role"),
    ({"model": "m", "messages": [{"role": "user", "content": 5}]}, 400, "messages[0].content"),
    ({"model": "m", "messages": [{"role": "user", "content": "x"}], "max_tokens": 10**6}, 400, "max_tokens"),
    ({"model": "m", "messages": [{"role": "user", "content": "x"}], "temperature": "hot"}, 400, "temperature"),
    ({"model": "m", "messages": [{"role": "user", "content": "x"}], "response_format": {"type": "xml"}}, 400,
     "response_format.type"),
    ({"model": "m", "messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "file:///etc/passwd"}}]}]},
     400, "url_not_allowed"),
    ({"model": "m", "messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "http://example.com/a.png"}}]}]},
     403, "url_fetch_disabled"),
    ({"model": "m", "messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "data:image/png;base64,@@@"}}]}]},
     400, "invalid_media"),
    ({"model": "m", "messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "data:image/gif;base64,R0lG"}}]}]},
     400, "unsupported_media_type"),
    ({"model": "m", "messages": [{"role": "user", "content": [{"type": "audio", "audio": {}}]}]}, 400, "unsupported_part"),
    ({"model": "m", "messages": [{"role": "user", "content": [{"type": "image_url", "image_url": jpeg_url(5)[0]}] * 9}]}, 400,
     "too_many_images"),
    ({"model": "m", "messages": [{"role": "user", "content": "x " * 5000}]}, 400, "context_length_exceeded"),
]


@pytest.mark.parametrize("body,status,where", BAD)
def test_a_bad_request_gets_openais_error_json_and_the_server_goes_on(served, body, status, where):
    r = post(served, body)
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and where in (error["param"], error["code"]), error
    assert post(served, {"messages": [{"role": "user", "content": "ok?"}], "max_tokens": 1}).status_code == 200


def test_bodies_routes_and_bombs_are_refused_before_any_work(served):
    assert post(served, None, raw=b"{not json").json()["error"]["code"] == "invalid_json"
    assert post(served, None, raw=b"x" * (served.settings.max_body_bytes + 1)).status_code == 413
    bomb = Image.new("RGB", (8000, 6000))  # 48 MP, over the 40 MP limit: refused from its header
    buf = io.BytesIO()
    bomb.save(buf, "PNG")
    url = "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()
    r = post(served, {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}}]}]})
    assert r.status_code == 413 and r.json()["error"]["code"] == "image_too_large"
    r = httpx.get(f"{served.url}/v1/nothing-here")
    assert r.status_code == 404 and "error" in r.json()
    assert httpx.get(f"{served.url}/v1/chat/completions").status_code == 405


def test_models_health_and_metrics(served):
    models = served.client().models.list()
    assert [m.id for m in models.data] == [served.name]
    for path in ("/health", "/v1/health/ready", "/api/v1/health/ready"):
        assert httpx.get(served.url + path).status_code == 200 and httpx.head(served.url + path).status_code == 200
    text = httpx.get(f"{served.url}/metrics").text
    for name in ("vila_edge_requests_total", "vila_edge_queue_depth", "vila_edge_ttft_seconds_bucket",
                 "vila_edge_image_tokens_total", "vila_edge_completion_tokens_total"):
        assert name in text


def test_a_client_that_leaves_mid_stream_cancels_its_generation(caption_engine):
    engine = CpuEngine(caption_engine, threads=1)
    running = Running(caption_engine, Captioner(engine.info, SlowDecode(engine)))

    def metric(name: str) -> float:
        line = next(x for x in httpx.get(f"{running.url}/metrics").text.splitlines() if x.startswith(name + " "))
        return float(line.split()[-1])

    try:
        body = {"messages": [{"role": "user", "content": "Tell a long story."}], "max_tokens": 400, "stream": True}
        with httpx.stream("POST", f"{running.url}/v1/chat/completions", json=body, timeout=60) as r:
            next(r.iter_lines())  # the role chunk: generation is under way (400 tokens: 8 s at least)
        deadline = time.time() + 6
        while metric("vila_edge_cancelled_total") == 0:
            assert time.time() < deadline, "the generation went on after its client left"
            time.sleep(0.05)
        assert metric("vila_edge_completion_tokens_total") == 0  # it never finished
        assert post(running, {"messages": [{"role": "user", "content": "still there?"}], "max_tokens": 1}).status_code == 200
    finally:
        running.stop()


def test_a_full_queue_answers_429_with_retry_after(caption_engine):
    engine = CpuEngine(caption_engine, threads=1)
    running = Running(caption_engine, Captioner(engine.info, SlowDecode(engine)), max_queue=1)  # 48 tokens: ~1 s each
    try:
        body = {"messages": [{"role": "user", "content": "Count to a hundred."}], "max_tokens": 48}
        with ThreadPoolExecutor(8) as pool:
            replies = list(pool.map(lambda _: post(running, body), range(8)))
        codes = sorted(r.status_code for r in replies)
        assert set(codes) <= {200, 429} and 200 in codes and 429 in codes, codes
        busy = next(r for r in replies if r.status_code == 429)
        assert busy.headers["retry-after"] == "1" and busy.json()["error"]["type"] == "rate_limit_error"
    finally:
        running.stop()


def test_an_api_key_is_required_when_set_and_needed_beyond_loopback(caption_engine, cli):
    running = Running(caption_engine, api_key="s3cret")
    try:
        with pytest.raises(openai.AuthenticationError):
            running.client("wrong").models.list()
        assert [m.id for m in running.client("s3cret").models.list().data] == [running.name]
        assert httpx.get(f"{running.url}/health").status_code == 200  # readiness probes carry no key
    finally:
        running.stop()
    code, _, err = cli("serve", caption_engine, "--host", "0.0.0.0")
    assert code == 2 and "--api-key" in err and "Traceback" not in err  # a usage error, before the model loads
    for flag, value, says in (("--webhook", "ftp://x/hook", "an http(s) URL"), ("--mqtt", "mqtt://broker", "TOPIC"),
                              ("--record-dir", "/nonexistent/dir", "no such folder")):
        code, _, err = cli("serve", caption_engine, flag, value)
        assert code == 2 and says in err and "Traceback" not in err, err


def test_multi_turn_prompts_follow_vilas_conversation_get_prompt():
    """VILA llava/conversation.py Conversation.get_prompt: SeparatorStyle.TWO (vicuna_v1) and CHATML (qwen2)."""
    from vila_edge.conversation import get_template

    turns = [("user", "<image>\nWhat?"), ("assistant", "A cat."), ("user", "Color?")]
    assert get_template("vicuna_v1").render("SYS", turns) == \
        "SYS USER: <image>\nWhat? ASSISTANT: A cat.</s>USER: Color? ASSISTANT:"
    assert get_template("qwen2").render(None, turns) == (
        "<|im_start|>system\nYou are a helpful assistant<|im_end|>\n<|im_start|>user\n<image>\nWhat?<|im_end|>\n"
        "<|im_start|>assistant\nA cat.<|im_end|>\n<|im_start|>user\nColor?<|im_end|>\n<|im_start|>assistant\n")
    assert get_template("hermes-2").render(None, turns[:1]) == \
        "<|im_start|>system\nAnswer the questions.<|im_end|><|im_start|>user\n<image>\nWhat?<|im_end|><|im_start|>assistant\n"
