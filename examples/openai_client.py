"""Ask `vila-edge serve` one question about an image with the `openai` SDK, as any OpenAI client would.

    vila-edge serve demo/vila-demo-cpu --port 8765 &
    python examples/openai_client.py --base-url http://127.0.0.1:8765/v1 --image demo/scene.png
"""

import argparse
import base64
import time
from pathlib import Path

import openai


def wait_ready(client: openai.OpenAI, seconds: float) -> str:
    """The served model's name, once the server answers /v1/models."""
    deadline = time.time() + seconds
    while True:
        try:
            return client.models.list().data[0].id
        except openai.APIConnectionError:
            if time.time() > deadline:
                raise SystemExit(f"no server at {client.base_url} after {seconds:g} s") from None
            time.sleep(0.5)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--base-url", default="http://127.0.0.1:8000/v1")
    p.add_argument("--api-key", default="none")
    p.add_argument("--image", required=True)
    p.add_argument("--question", default="Describe the image.")
    p.add_argument("--wait", type=float, default=60.0, help="seconds to wait for the server to come up")
    args = p.parse_args()
    client = openai.OpenAI(base_url=args.base_url, api_key=args.api_key)
    model = wait_ready(client, args.wait)
    suffix = Path(args.image).suffix.lower().lstrip(".").replace("jpg", "jpeg")
    url = f"data:image/{suffix};base64," + base64.b64encode(Path(args.image).read_bytes()).decode()
    print(f"{model}: ", end="", flush=True)
    stream = client.chat.completions.create(model=model, max_tokens=32, stream=True, stream_options={"include_usage": True},
                                            messages=[{"role": "user", "content": [
                                                {"type": "image_url", "image_url": {"url": url}},
                                                {"type": "text", "text": args.question}]}])
    for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            print(chunk.choices[0].delta.content, end="", flush=True)
        elif chunk.usage:
            details = chunk.usage.prompt_tokens_details
            print(f"\n[{chunk.usage.prompt_tokens} prompt tokens ({details.image_tokens} image), "
                  f"{chunk.usage.completion_tokens} generated]")


if __name__ == "__main__":
    main()
