"""Natural-language alert rules on live streams (Jetson Platform Services' /api/v1/alerts): each rule is a yes/no
question asked about a stream's newest frame every `interval` seconds under JPS's fixed system prompt. A rule's
state change is an event (JPS's shape, plus its state, the answer and the frame's time); a rule that turns true
again within `cooldown` seconds of its last alert is not re-announced.

Rule evaluations go through the same worker FIFO as chat requests (one engine, first come first served): a round
never queues more than one evaluation per rule, and one that finds the queue full is skipped and counted."""

import asyncio
import re
import time
from dataclasses import dataclass, field

from starlette.concurrency import run_in_threadpool

from ..backend import TokenSource
from ..generate import SamplingParams
from .protocol import ApiError
from .worker import QueueFull

SYSTEM = ("You are an alert system watching a camera. Answer the question about the image with one word. "
          "Your answer MUST be 'yes' or 'no'.")
MAX_RULE_CHARS = 100  # JPS's limit
ANSWER = r" ?([Yy]es|[Nn]o)"


@dataclass
class Rule:
    id: str
    stream_id: str
    text: str
    state: bool | None = None  # None: not evaluated yet
    answer: str = ""
    evaluations: int = 0
    last_alert: float = 0.0
    announced: bool = False  # the state the last event announced
    checked_frame: int = -1
    error: str | None = None  # the last evaluation's failure

    def to_json(self) -> dict:
        return {"id": self.id, "stream_id": self.stream_id, "rule_string": self.text, "state": self.state,
                "answer": self.answer, "evaluations": self.evaluations, "error": self.error}


def is_yes(answer: str) -> bool | None:
    words = re.findall(r"[a-z]+", answer.lower())
    return {"yes": True, "no": False}.get(words[0]) if words else None


@dataclass
class Alerts:
    streams: object  # streams.Streams
    server: object  # app.Server: submit(), metrics, captioner
    notifier: object  # notify.Notifier
    interval: float = 2.0
    cooldown: float = 60.0
    max_rules: int = 10
    rules: dict[str, Rule] = field(default_factory=dict)
    skipped: int = 0
    _next_id: int = 0

    def set_rules(self, body) -> list[Rule]:
        """JPS's POST /api/v1/alerts {"alerts": [...], "id": STREAM_ID}: replaces that stream's rules."""
        if not isinstance(body, dict):
            raise ApiError(400, "the body must be a JSON object", None, "invalid_json")
        texts, stream_id = body.get("alerts"), body.get("id")
        self.streams.get(stream_id, "id")
        if not isinstance(texts, list) or not all(isinstance(t, str) and t.strip() for t in texts):
            raise ApiError(400, "'alerts' must be a list of yes/no questions", "alerts", "invalid_value")
        if len(texts) > self.max_rules or any(len(t) > MAX_RULE_CHARS for t in texts):
            raise ApiError(400, f"at most {self.max_rules} rules of at most {MAX_RULE_CHARS} characters", "alerts",
                           "too_many_rules")
        for rule_id in [r.id for r in self.rules.values() if r.stream_id == stream_id]:
            del self.rules[rule_id]
        added = []
        for text in texts:
            rule = Rule(f"r{self._next_id}", stream_id, text.strip())
            self._next_id += 1
            self.rules[rule.id] = rule
            added.append(rule)
        return added

    def remove(self, rule_id: str) -> Rule:
        if rule_id not in self.rules:
            raise ApiError(404, f"no alert rule {rule_id!r}; GET /api/v1/alerts lists them", "alert_id", "rule_not_found")
        return self.rules.pop(rule_id)

    def forget_stream(self, stream_id: str) -> None:
        for rule_id in [r.id for r in self.rules.values() if r.stream_id == stream_id]:
            del self.rules[rule_id]

    async def run(self) -> None:
        """Forever: a round of evaluations every `interval` seconds. A rule whose evaluation fails is reported in
        `errors` (and by GET /api/v1/alerts) and tried again next round; the others go on."""
        while True:
            started, rules = time.monotonic(), list(self.rules.values())
            results = await asyncio.gather(*(self.evaluate(rule) for rule in rules), return_exceptions=True)
            for rule, result in zip(rules, results):
                rule.error = f"{type(result).__name__}: {result}" if isinstance(result, Exception) else None
            await asyncio.sleep(max(0.05, self.interval - (time.monotonic() - started)))

    async def yes_no(self):
        """A constraint to ` yes` or ` no` (any capitalisation of the first letter) where our sampler runs, so any
        model answers in the rule's terms; a TensorRT-LLM engine samples on its own and its answer is read as it is."""
        if isinstance(self.server.captioner.model, TokenSource):
            return None
        grammar = await run_in_threadpool(self.server.grammar)
        return grammar.regex(ANSWER)

    async def evaluate(self, rule: Rule) -> None:
        stream = self.streams.streams.get(rule.stream_id)
        if stream is None or not stream.frames or stream.frames[-1].index == rule.checked_frame:
            return  # no frame yet, or none new since the last look
        frame = stream.frames[-1]
        captioner, params = self.server.captioner, SamplingParams(max_new_tokens=4, constraint=await self.yes_no())
        try:
            job = self.server.worker.submit(self.server.job(lambda on_text: captioner.chat(
                SYSTEM, [("user", rule.text)], [1], [frame.image], params, on_text)))
        except QueueFull:
            self.skipped += 1
            return
        kind, answer = await job.events.get()
        while kind == "text":
            kind, answer = await job.events.get()
        if kind != "done" or rule.id not in self.rules:
            return
        rule.checked_frame, rule.evaluations, rule.answer = frame.index, rule.evaluations + 1, answer.text
        state = is_yes(answer.text)
        self.server.metrics.alert_state.labels(rule.id).set(-1 if state is None else int(state))
        if state is None or state == rule.state:
            return
        rule.state, now = state, time.time()
        if state == rule.announced or (state and now - rule.last_alert < self.cooldown):
            return  # nothing new to announce, or true again within the cooldown
        rule.announced = state
        if state:
            rule.last_alert = now
        record = event(rule, frame, now)
        if stream.recorder:  # the recording shows the rule while it holds; an alert starts (or extends) a clip
            clip = stream.recorder.caption(f"ALERT: {rule.text}" if state else "", alert=state)
            record["clip"] = str(clip) if clip else None
        self.notifier.publish(record)


def event(rule: Rule, frame, now: float) -> dict:
    """JPS's alert event (title, description, alert_id, type, rule_string, timestamp, stream_id), plus the state,
    the model's answer and the frame's own time in its stream."""
    verb = "True" if rule.state else "False"
    return {"title": "VLM Alert Triggered" if rule.state else "VLM Alert Cleared",
            "description": f"Rule '{rule.text}' is {verb}!", "alert_id": rule.id, "type": "vlm_alert",
            "rule_string": rule.text, "timestamp": time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(now)),
            "stream_id": rule.stream_id, "state": rule.state, "answer": rule.answer,
            "frame_index": frame.index, "frame_time_s": round(frame.timestamp, 3)}
