# Two commands matter: `make demo` (set up, build the demo collection, serve the UI) and `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python
# torch and torchvision are pinned to the builds available offline on our machines; any torch>=2.2 works.
TORCH := torch==2.14.1 torchvision==0.29.1

.PHONY: venv demo test bench clean

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install -q $(TORCH)
	$(VENV)/bin/pip install -q -e '.[dev]'
	touch $@

demo: venv
	$(PY) app.py

test: venv
	HF_HUB_OFFLINE=1 $(PY) -m pytest -q

bench: venv
	$(PY) bench/encode.py
	$(PY) bench/ingest.py
	$(PY) bench/query.py

clean:
	rm -rf $(VENV) .pytest_cache demo-data build *.egg-info   # the demo cache itself is in ~/.cache/mmretrieval/demo
