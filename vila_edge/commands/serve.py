"""`vila-edge serve MODEL`: load the model once (an engine folder, or a checkpoint on torch), then serve it over
HTTP with uvicorn until stopped. Safe by default: loopback only; any other address needs an API key."""

import importlib.util
import ipaddress
import os
import urllib.parse

from ..caption import Captioner
from ..errors import UsageError, require_extra
from .backends import BackendOptions, load_backend

API_KEY_ENV = "VILA_EDGE_API_KEY"


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_bind(settings) -> None:
    """Refuses an address beyond this machine without an API key, before the model loads."""
    settings.api_key = settings.api_key or os.environ.get(API_KEY_ENV) or None
    if not is_loopback(settings.host) and not settings.api_key:
        raise UsageError(f"--host {settings.host} serves beyond this machine: pass --api-key KEY (or set {API_KEY_ENV}); "
                         "clients then send Authorization: Bearer KEY")
    if settings.webhook and urllib.parse.urlsplit(settings.webhook).scheme not in ("http", "https"):
        raise UsageError(f"--webhook {settings.webhook}: an http(s) URL")
    if settings.mqtt:
        mqtt = urllib.parse.urlsplit(settings.mqtt)
        if mqtt.scheme != "mqtt" or not mqtt.hostname or not mqtt.path.strip("/"):
            raise UsageError(f"--mqtt {settings.mqtt}: expected mqtt://HOST[:PORT]/TOPIC")
        if importlib.util.find_spec("paho") is None:
            raise UsageError("--mqtt needs paho-mqtt: pip install paho-mqtt (or 'vila-edge[serve]')")
    if settings.record_dir and not os.path.isdir(settings.record_dir):
        raise UsageError(f"--record-dir {settings.record_dir}: no such folder; create it first")
    if not 0 < settings.port < 65536 or settings.max_queue < 1:
        raise UsageError(f"--port {settings.port} / --max-queue {settings.max_queue}: a port in 1..65535, a queue of 1 or more")


def build_app(model: str, backend: BackendOptions, conv_mode: str | None, settings, log=print):
    """The app over the loaded model, and the model's name as /v1/models reports it."""
    require_extra("serve", "vila-edge serve")
    from ..serve.app import create_app

    check_bind(settings)
    engine, backend_name = load_backend(model, backend)
    captioner = Captioner(engine.info, engine, conv_mode, backend.max_tiles)
    name = engine.info.name
    log(f"serving {name} ({backend_name}, conv mode {captioner.conv_mode}) on http://{settings.host}:{settings.port}/v1")
    return create_app(captioner, name, settings), name


def serve(model: str, backend: BackendOptions, conv_mode: str | None, settings) -> int:
    import uvicorn

    app, _ = build_app(model, backend, conv_mode, settings)
    uvicorn.run(app, host=settings.host, port=settings.port, log_level="warning", timeout_graceful_shutdown=5)
    return 0
