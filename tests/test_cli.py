def test_caption_text_mode_streams_the_answer(tiny, cli):
    code, out, err = cli("caption", tiny(), "--prompt", "Say something.", "--conv-mode", "vicuna_v1",
                         "--max-new-tokens", 5)
    assert code == 0, err
    assert out.endswith("\n") and "TTFT" in err and "conv mode vicuna_v1" in err


def test_caption_errors_are_one_line_without_traceback(tiny, cli, tmp_path):
    code, out, err = cli("caption", tiny(), "--image", tmp_path / "nope.png", "--prompt", "?")
    assert code == 1 and "nope.png: no such image file" in err and "Traceback" not in err
    code, _, err = cli("caption", tiny(), "--prompt", "?", "--conv-mode", "nonsense")
    assert code == 2 and "unknown conv mode 'nonsense'" in err
    code, _, err = cli("caption", tmp_path, "--prompt", "?")
    assert code == 1 and "config.json: missing" in err


def test_prompt_longer_than_the_model_is_refused(tiny, cli, tmp_path):
    code, _, err = cli("caption", tiny(), "--prompt", "word " * 600, "--conv-mode", "vicuna_v1")
    assert code == 2 and "takes at most 512" in err
