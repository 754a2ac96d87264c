"""A `vila-edge serve` app on a real uvicorn server in a thread, on a free 127.0.0.1 port, for the server tests."""

import socket
import threading
import time

import openai


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Running:
    """A uvicorn server in a thread, over an app built the way `vila-edge serve` builds it."""

    def __init__(self, engine_folder, captioner=None, **settings):
        import uvicorn

        from vila_edge.commands.backends import BackendOptions
        from vila_edge.commands.serve import build_app
        from vila_edge.serve.app import create_app
        from vila_edge.serve.settings import ServeSettings

        self.settings = ServeSettings(port=free_port(), **settings)
        if captioner is None:
            self.app, self.name = build_app(str(engine_folder), BackendOptions(threads=1), None, self.settings,
                                            log=lambda m: None)
        else:
            self.app, self.name = create_app(captioner, "slow", self.settings), "slow"
        self.server = uvicorn.Server(uvicorn.Config(self.app, host="127.0.0.1", port=self.settings.port, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.time() + 30
        while not self.server.started:
            assert time.time() < deadline, "the server did not start"
            time.sleep(0.02)
        self.url = f"http://127.0.0.1:{self.settings.port}"

    def client(self, key: str = "none", **kw) -> "openai.OpenAI":
        return openai.OpenAI(base_url=f"{self.url}/v1", api_key=key, max_retries=0, timeout=60, **kw)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)



class SlowDecode:
    """The tiny engine, 20 ms slower per decoded token, so a generation outlasts its client's disconnect on a loaded
    machine (the engine itself takes well under a second for the whole answer)."""

    def __init__(self, engine):
        self.engine = engine

    def __getattr__(self, name):
        return getattr(self.engine, name)

    def reset(self):
        self.engine.reset()

    def prefill(self, inputs):
        return self.engine.prefill(inputs)

    def decode(self, token_id):
        time.sleep(0.02)
        return self.engine.decode(token_id)
