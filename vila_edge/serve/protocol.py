"""OpenAI Chat Completions, as vila-edge serves it: a request body checked into a ChatRequest (or an ApiError,
OpenAI's error JSON with a 4xx), and the response and stream-chunk bodies.

Accepted (serving-and-users.md §2.1): `model` of any value; `system`/`user`/`assistant` messages; `content` as a
string or a list of parts `text`, `image_url` (an object or a bare string), `video_url` (with an optional `frames`);
`max_tokens`/`max_completion_tokens`, `temperature`, `top_p`, `seed`, `stop`, `stream`, `stream_options`,
`response_format` `text`/`json_object`/`json_schema` (the nested `json_schema.schema` or a top-level `schema`).
A message's images go before its text, as VILA puts them, unless the text places them with `<image>` tags.
"""

import json
import time
import uuid
from dataclasses import dataclass, field

from .settings import Limits

ROLES = ("system", "user", "assistant")


class ApiError(Exception):
    """A request refused: HTTP `status` and OpenAI's error body."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None,
                 kind: str = "invalid_request_error", headers: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.kind = status, message, param, code, kind
        self.headers = headers or {}

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}}


@dataclass
class MediaRef:
    kind: str  # "image", "video" or "stream"
    url: str  # a stream's: its id
    frames: int | None = None  # video: how many to sample; stream: the newest how many
    param: str = ""  # where it was in the request, for errors


@dataclass
class ChatRequest:
    system: str | None
    turns: list[tuple[str, str]]  # (role, text), user and assistant alternating, ending with a user turn
    media_per_turn: list[list[MediaRef]]
    max_tokens: int | None
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int = 0
    stop: tuple[str, ...] = ()
    stream: bool = False
    include_usage: bool = False
    response_format: dict = field(default_factory=lambda: {"type": "text"})

    @property
    def media(self) -> list[MediaRef]:
        return [m for refs in self.media_per_turn for m in refs]


def _number(body: dict, key: str, kind, low: float, high: float, default):
    value = body.get(key)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (kind is int and not float(value).is_integer()):
        raise ApiError(400, f"'{key}' must be {'an integer' if kind is int else 'a number'}", key, "invalid_type")
    if not low <= value <= high:
        raise ApiError(400, f"'{key}' must be between {low} and {high}; got {value}", key, "invalid_value")
    return kind(value)


def _part(part, where: str) -> tuple[str, MediaRef | None]:
    """A content part -> (its text, its media)."""
    if not isinstance(part, dict) or not isinstance(part.get("type"), str):
        raise ApiError(400, f"{where} must be an object with a 'type'", where, "invalid_type")
    kind = part["type"]
    if kind == "text":
        if not isinstance(part.get("text"), str):
            raise ApiError(400, f"{where}.text must be a string", f"{where}.text", "invalid_type")
        return part["text"], None
    if kind in ("image_url", "video_url"):
        ref = part.get(kind)
        url = ref.get("url") if isinstance(ref, dict) else ref  # Ollama, mlc-llm and torchchat send a bare string
        if not isinstance(url, str) or not url:
            raise ApiError(400, f"{where}.{kind} must be a URL string or an object with 'url'", f"{where}.{kind}",
                           "invalid_type")
        frames = (ref.get("frames") if isinstance(ref, dict) else None) if kind == "video_url" else None
        if frames is not None and (isinstance(frames, bool) or not isinstance(frames, int) or frames < 1):
            raise ApiError(400, f"{where}.video_url.frames must be a positive integer", f"{where}.video_url.frames")
        return "", MediaRef(kind.removesuffix("_url"), url, frames, f"{where}.{kind}")
    if kind == "stream":  # JPS: the newest frame (or the `window` newest) of a live stream
        ref = part.get("stream")
        if not isinstance(ref, dict) or not isinstance(ref.get("stream_id"), str):
            raise ApiError(400, f"{where}.stream must be an object with a 'stream_id'", f"{where}.stream", "invalid_type")
        window = ref.get("window", 1)
        if isinstance(window, bool) or not isinstance(window, int) or window < 1:
            raise ApiError(400, f"{where}.stream.window must be a positive integer", f"{where}.stream.window")
        return "", MediaRef("stream", ref["stream_id"], window, f"{where}.stream")
    raise ApiError(400, f"{where}: part type {kind!r} is not supported (text, image_url, video_url, stream)",
                   f"{where}.type", "unsupported_part")


def _content(content, where: str) -> tuple[str, list[MediaRef]]:
    if isinstance(content, str):
        return content, []
    if not isinstance(content, list):
        raise ApiError(400, f"{where} must be a string or a list of parts", where, "invalid_type")
    texts, media = [], []
    for i, part in enumerate(content):
        text, ref = _part(part, f"{where}[{i}]")
        texts.append(text)
        media += [ref] if ref else []
    return "\n".join(t for t in texts if t), media


def _messages(body: dict, limits: Limits) -> tuple[str | None, list[tuple[str, str]], list[list[MediaRef]]]:
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise ApiError(400, "'messages' must be a non-empty list", "messages", "invalid_type")
    if len(messages) > limits.max_messages:
        raise ApiError(400, f"at most {limits.max_messages} messages", "messages", "too_many_messages")
    system, turns, media = None, [], []
    for i, m in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(m, dict) or m.get("role") not in ROLES:
            raise ApiError(400, f"{where}.role must be one of {', '.join(ROLES)}", f"{where}.role", "invalid_value")
        text, refs = _content(m.get("content"), f"{where}.content")
        if m["role"] == "system":
            if turns or refs:
                raise ApiError(400, f"{where}: a system message comes first and holds text only", where)
            system = text if system is None else system + "\n" + text
            continue
        if m["role"] == "assistant" and refs:
            raise ApiError(400, f"{where}: an assistant message holds text only", where)
        if turns and turns[-1][0] == m["role"]:  # two in a row: one turn, as templates alternate
            turns[-1], media[-1] = (m["role"], turns[-1][1] + "\n" + text), media[-1] + refs
        else:
            turns.append((m["role"], text))
            media.append(refs)
    if not turns or turns[-1][0] != "user":
        raise ApiError(400, "the last message must be the user's", "messages", "invalid_value")
    if turns[0][0] != "user":
        turns.insert(0, ("user", ""))
        media.insert(0, [])
    return system, turns, media


def _response_format(body: dict) -> dict:
    fmt = body.get("response_format") or {"type": "text"}
    kind = fmt.get("type") if isinstance(fmt, dict) else None
    if kind in ("text", "json_object"):
        return {"type": kind}
    if kind == "json_schema":
        spec = fmt.get("json_schema") if isinstance(fmt.get("json_schema"), dict) else {}
        schema = spec.get("schema", fmt.get("schema"))  # llama.cpp takes both forms
        if not isinstance(schema, dict):
            raise ApiError(400, "response_format json_schema needs a 'schema' object", "response_format.json_schema.schema")
        return {"type": kind, "schema": schema, "name": spec.get("name")}
    raise ApiError(400, "response_format.type must be text, json_object or json_schema", "response_format.type",
                   "invalid_value")


def parse_chat(body, limits: Limits) -> ChatRequest:
    """The request body -> ChatRequest, or ApiError naming the field."""
    if not isinstance(body, dict):
        raise ApiError(400, "the request body must be a JSON object", None, "invalid_json")
    system, turns, media = _messages(body, limits)
    n_media = sum(len(refs) for refs in media)
    if n_media > limits.max_images:
        raise ApiError(400, f"{n_media} images or videos; this server takes at most {limits.max_images} per request",
                       "messages", "too_many_images")
    stop = body.get("stop")
    stop = [stop] if isinstance(stop, str) else stop
    if stop is not None and (not isinstance(stop, list) or len(stop) > 4 or not all(isinstance(s, str) and s for s in stop)):
        raise ApiError(400, "'stop' must be a string or a list of at most 4 non-empty strings", "stop", "invalid_value")
    key = "max_completion_tokens" if body.get("max_completion_tokens") is not None else "max_tokens"
    options = body.get("stream_options") or {}
    return ChatRequest(
        system, turns, media,
        max_tokens=_number(body, key, int, 1, limits.max_tokens, None),
        temperature=_number(body, "temperature", float, 0.0, 2.0, 0.0),
        top_p=_number(body, "top_p", float, 0.0, 1.0, 1.0) or 1.0,
        seed=_number(body, "seed", int, 0, 2**63 - 1, 0),
        stop=tuple(stop or ()),
        stream=bool(body.get("stream")),
        include_usage=bool(isinstance(options, dict) and options.get("include_usage")),
        response_format=_response_format(body),
    )


async def read_json(request, limit: int):
    """A request's JSON body (a starlette Request), at most `limit` bytes."""
    size = int(request.headers.get("content-length") or 0)
    if size > limit:
        raise ApiError(413, f"the request body is {size} bytes; this server takes at most {limit}", None, "body_too_large")
    body = bytearray()
    async for part in request.stream():
        body += part
        if len(body) > limit:
            raise ApiError(413, f"the request body is over {limit} bytes", None, "body_too_large")
    try:
        return json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ApiError(400, f"the request body is not JSON: {e}", None, "invalid_json") from None


# ---- responses -----------------------------------------------------------------------------------------------------


def completion_id() -> str:
    return f"chatcmpl-{uuid.uuid4().hex[:24]}"


FINISH = {"stop": "stop", "length": "length", "context": "length"}


def usage(answer) -> dict:
    return {"prompt_tokens": answer.prompt_tokens, "completion_tokens": answer.completion_tokens,
            "total_tokens": answer.prompt_tokens + answer.completion_tokens,
            "prompt_tokens_details": {"image_tokens": answer.image_tokens, "cached_tokens": 0}}


def timings(answer) -> dict:
    return {"ttft_ms": round(1e3 * answer.ttft_s, 1), "vision_ms": round(1e3 * answer.vision_s, 1),
            "decode_tok_s": round(answer.decode_tok_s, 2)}


def completion(rid: str, model: str, answer) -> dict:
    return {"id": rid, "object": "chat.completion", "created": int(time.time()), "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": answer.text},
                         "logprobs": None, "finish_reason": FINISH[answer.stop_reason]}],
            "usage": usage(answer), "timings": timings(answer)}


def chunk(rid: str, model: str, created: int, delta: dict, finish: str | None = None, answer=None) -> dict:
    """One chat.completion.chunk; with `answer` and no delta, the usage chunk (choices empty, as OpenAI sends it)."""
    out = {"id": rid, "object": "chat.completion.chunk", "created": created, "model": model,
           "choices": [] if answer is not None else [{"index": 0, "delta": delta, "logprobs": None,
                                                       "finish_reason": finish}]}
    if answer is not None:
        out |= {"usage": usage(answer), "timings": timings(answer)}
    return out
