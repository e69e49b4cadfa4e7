# The two commands of the README: `make demo` (install, build the synth demo, pretrain, evaluate) and
# `make test` (`make test-quick`: the tests not marked slow). Everything else is a step of those.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
# The demo recipes read data/shards/synth-*, so the data folder is fixed.
DATA   := data

.PHONY: install demo test test-quick shards clean-demo

# requirements-extras.txt: the cloud, ray and tracking extras (and moto for their tests), so CI runs those tests.
$(VENV)/.installed: requirements-cpu.txt requirements-extras.txt constraints-cpu.txt setup.py
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q -c constraints-cpu.txt -r requirements-cpu.txt -r requirements-extras.txt
	$(VENV)/bin/pip install -q --no-deps -e .
	touch $@

install: $(VENV)/.installed

# The synth suite's raw trees in the real datasets' layouts, then their shards through the real adapters.
shards: install
	$(PY) -m shards.build synth --root $(DATA)/raw --out $(DATA)/shards --scale demo --seed 0

# Pretrain the demo-scale mixed-regime FWM recipe (resumes if a run is already there), then probe the
# exported encoder on the four synth benchmarks beside its random init and the pixel baseline (mean and
# 95% interval over 3 probe seeds) and print the table.
demo: shards
	$(PY) -m engine.train --recipe recipes/demo/mixed_fwm.yaml --resume auto
	$(PY) -m engine.eval.evaluate runs/demo_mixed_fwm/encoder.safetensors --benchmarks synth \
		--shards $(DATA)/shards --out runs/demo_mixed_fwm/eval --probe-epochs 20 --baselines --probe-seeds 3

# Every test (the slow ones too: real DeepSpeed launches, signals, resumes), within 15 minutes on 2 cores.
test: install
	$(PY) -m pytest -q

# The tests not marked slow: everything but the real training runs.
test-quick: install
	$(PY) -m pytest -q -m "not slow"

clean-demo:
	rm -rf $(DATA)/raw $(DATA)/shards
