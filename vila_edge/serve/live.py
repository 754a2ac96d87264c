"""Jetson Platform Services' live-stream and alert routes, with its request bodies and event shape so its clients
work unchanged: /api/v1/live-stream (POST, GET, DELETE), /api/v1/alerts (POST, GET, DELETE), the WebSocket
/api/v1/alerts/ws of alert events, and GET /api/v1/alerts/events (the recent ones)."""

import asyncio

from fastapi import FastAPI, Request, WebSocket, WebSocketDisconnect
from starlette.concurrency import run_in_threadpool

from .alerts import Alerts
from .notify import Notifier
from .protocol import ApiError, read_json
from .streams import Streams


async def _body(request: Request) -> dict:
    body = await read_json(request, request.app.state.server.settings.max_body_bytes)
    if not isinstance(body, dict):
        raise ApiError(400, "the request body must be a JSON object", None, "invalid_json")
    return body


async def add_stream(request: Request):
    body = await _body(request)
    stream = await run_in_threadpool(request.app.state.streams.add, body.get("liveStreamUrl"), body.get("description"))
    return {"id": stream.id}


async def list_streams(request: Request):
    return [s.to_json() for s in request.app.state.streams.streams.values()]


async def remove_stream(request: Request, stream_id: str):
    request.app.state.alerts.forget_stream(stream_id)
    stream = await run_in_threadpool(request.app.state.streams.remove, stream_id)
    return {"id": stream.id, "deleted": True}


async def set_alerts(request: Request):
    rules = request.app.state.alerts.set_rules(await _body(request))
    return {"id": rules[0].stream_id if rules else None, "alerts": [r.to_json() for r in rules]}


async def list_alerts(request: Request):
    return {"alerts": [r.to_json() for r in request.app.state.alerts.rules.values()],
            "skipped_evaluations": request.app.state.alerts.skipped}


async def remove_alert(request: Request, alert_id: str):
    return {"id": request.app.state.alerts.remove(alert_id).id, "deleted": True}


async def recent_events(request: Request):
    notifier = request.app.state.notifier
    return {"events": list(notifier.history), "sent": notifier.sent, "failed": notifier.failed}


async def alert_socket(websocket: WebSocket):
    server, notifier = websocket.app.state.server, websocket.app.state.notifier
    key = server.settings.api_key
    if key and websocket.headers.get("authorization", "") != f"Bearer {key}" and websocket.query_params.get("api_key") != key:
        await websocket.close(code=1008)  # policy violation: no key
        return
    await websocket.accept()
    events = notifier.subscribe()
    try:
        while True:
            await websocket.send_json(await events.get())
            notifier.sent["websocket"] += 1
    except (WebSocketDisconnect, RuntimeError):
        pass
    finally:
        notifier.unsubscribe(events)


def add_live_routes(app: FastAPI, server, settings, log=print) -> None:
    """The live-stream layer on `app`: its registry, rules, notifier and the task that evaluates the rules."""
    app.state.streams = Streams(settings.max_streams, settings.stream_window, settings.stream_fps, log=log,
                                record_dir=settings.record_dir)
    app.state.notifier = Notifier(settings.webhook, settings.mqtt, log=log)
    app.state.alerts = Alerts(app.state.streams, server, app.state.notifier, settings.alert_interval,
                              settings.alert_cooldown, settings.max_rules)
    app.add_api_route("/api/v1/live-stream", add_stream, methods=["POST"])
    app.add_api_route("/api/v1/live-stream", list_streams, methods=["GET"])
    app.add_api_route("/api/v1/live-stream/{stream_id}", remove_stream, methods=["DELETE"])
    app.add_api_route("/api/v1/alerts", set_alerts, methods=["POST"])
    app.add_api_route("/api/v1/alerts", list_alerts, methods=["GET"])
    app.add_api_route("/api/v1/alerts/events", recent_events, methods=["GET"])
    app.add_api_route("/api/v1/alerts/{alert_id}", remove_alert, methods=["DELETE"])
    app.add_api_websocket_route("/api/v1/alerts/ws", alert_socket)


def start_live(app: FastAPI) -> asyncio.Task:
    return asyncio.get_running_loop().create_task(app.state.alerts.run())


def stop_live(app: FastAPI) -> None:
    app.state.streams.close()
    app.state.notifier.close()
