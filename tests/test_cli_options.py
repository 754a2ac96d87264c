"""The parser's defaults are the options dataclasses' (never written twice), and renamed spellings still work."""

import dataclasses
import json

import pytest

from vila_edge.bench import BenchSettings
from vila_edge.capture import CaptureOptions
from vila_edge.cli import build_parser
from vila_edge.commands.backends import BackendOptions
from vila_edge.export.options import BuildOptions
from vila_edge.generate import SamplingParams
from vila_edge.quant.options import AwqSettings, PplOptions, QuantizeOptions, VisionQuantOptions

OPTIONS = {
    "caption": (SamplingParams, CaptureOptions, BackendOptions),
    "quantize": (AwqSettings, QuantizeOptions),
    "eval-ppl": (PplOptions,),
    "build-engine": (BuildOptions,),
    "bench": (BenchSettings, BackendOptions),
}
PARSED_FROM_TEXT = ("calib", "vision")  # quantize's --calib SPEC and --vision CHOICE become a CalibSpec / VisionQuantOptions


def subparser(name):
    parser = build_parser()
    action = next(a for a in parser._actions if a.dest == "command")
    return action.choices[name]


def parsed_defaults(name, *required):
    return vars(subparser(name).parse_args(list(required)))


@pytest.mark.parametrize("command", list(OPTIONS))
def test_every_option_defaults_to_its_dataclass_field(command):
    required = {"caption": ["M", "--prompt", "q"], "quantize": ["C", "-o", "O"], "eval-ppl": ["C", "--text", "t"],
                "build-engine": ["Q", "-o", "O", "--target", "cpu"], "bench": ["E"]}[command]
    args = parsed_defaults(command, *required)
    checked = 0
    for cls in OPTIONS[command]:
        for field in dataclasses.fields(cls):
            if field.name in args and field.name not in PARSED_FROM_TEXT:
                default = field.default if field.default is not dataclasses.MISSING else field.default_factory()
                assert args[field.name] == default, (command, field.name)
                checked += 1
    assert checked >= 2


def test_quantize_vision_options_default_to_the_dataclass():
    args = parsed_defaults("quantize", "C", "-o", "O")
    for field in dataclasses.fields(VisionQuantOptions):
        if field.name in args:
            assert args[field.name] == field.default
    assert {VisionQuantOptions.alpha, VisionQuantOptions.n_images} == {args["alpha"], args["n_images"]}


def test_quantize_vision_fp16_is_the_old_spelling_of_none(tiny, tmp_path, cli):
    from conftest import QUICK_QUANT

    out = tmp_path / "q"
    with pytest.warns(FutureWarning, match="--vision fp16 is now --vision none"):
        code, _, err = cli("quantize", tiny(), "-o", out, "--vision", "fp16", "--conv-mode", "hermes-2",
                           "--group-size", 32, *QUICK_QUANT)
    assert code == 0, err
    assert not (out / "vision").exists()
    assert json.loads((out / "config.json").read_text())["conv_mode"] == "hermes-2"
    assert json.loads((out / "quant_report.json").read_text())["conv_mode"] == "hermes-2"
    code, text, err = cli("inspect", out, "--format", "json")
    assert code == 0, err
    info = json.loads(text)
    assert (info["conv_mode"], info["conv_mode_source"]) == ("hermes-2", "config.json conv_mode")


def test_help_shows_the_dataclass_defaults():
    text = subparser("quantize").format_help()
    assert f"(default: {AwqSettings.group_size})" in text and "(default: 5GB)" in text
    assert "{w8a8,none}" in text
