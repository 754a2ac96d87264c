"""`vila-edge serve MODEL`: an OpenAI-compatible chat server (see vila_edge/serve/)."""

from ..commands.backends import BACKENDS, BackendOptions
from ..formats import VISION_BACKENDS
from ..runtime.cpu import KV_CACHE_BYTES
from .options import add_allow_pickle, add_conv_mode, add_device, add_fields, add_llava_options, from_args

CPU_ENGINE = ("threads", "kernels", "max_seq", "activations", "kv_cache", "vision_backend")


def add_parser(sub) -> None:
    from ..serve.settings import HELP, LIMIT_FIELDS, LIVE_FIELDS, MEDIA_FIELDS, SERVER_FIELDS, ServeSettings

    q = sub.add_parser("serve", help="serve a model over an OpenAI-compatible HTTP API")
    q.add_argument("model", help="an engine folder (build-engine) or a VILA checkpoint folder")
    extra = {name: {"help": text} for name, text in HELP.items()}
    extra |= {"api_key": {"metavar": "KEY", "help": HELP["api_key"]}, "webhook": {"metavar": "URL", "help": HELP["webhook"]},
              "mqtt": {"metavar": "mqtt://HOST:PORT/TOPIC", "help": HELP["mqtt"]}}
    add_fields(q, ServeSettings, *SERVER_FIELDS, *LIMIT_FIELDS, *MEDIA_FIELDS, *LIVE_FIELDS, **extra)
    add_conv_mode(q)
    add_fields(q, BackendOptions, "backend", *CPU_ENGINE, "max_tiles", backend={"choices": BACKENDS},
               activations={"choices": ("int8", "fp32")}, kv_cache={"choices": tuple(KV_CACHE_BYTES)},
               vision_backend={"choices": VISION_BACKENDS})
    add_device(q)
    add_fields(q, BackendOptions, "dtype", dtype={"choices": ("auto", "float32", "float16", "bfloat16")})
    add_allow_pickle(q)
    add_llava_options(q)
    q.set_defaults(run=run)


def run(args) -> int:
    from ..commands.serve import serve
    from ..serve.settings import LIMIT_FIELDS, LIVE_FIELDS, MEDIA_FIELDS, SERVER_FIELDS, ServeSettings

    backend = from_args(BackendOptions, args, "backend", *CPU_ENGINE, "max_tiles", "device", "dtype", "allow_pickle",
                        "vision_tower", "hf_processor", "qformer_tokenizer")
    settings = from_args(ServeSettings, args, *SERVER_FIELDS, *LIMIT_FIELDS, *MEDIA_FIELDS, *LIVE_FIELDS)
    return serve(args.model, backend, args.conv_mode, settings)
