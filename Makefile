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

# The demo: the small-scale recipe that learns (recipes/demo/ucf_sigreg_small.yaml, docs/learning.md) pretrained
# with 3 seeds on synth-ucf (resumes what is there), each encoder probed on synth-ucf's test split beside the
# random init and the pixel baseline of its seed (runs/demo/REPORT.md), seed 0's learning curve, then the
# table and the verdict: trained − the better reference with its 95% interval over the pretraining seeds.
DEMO_VARIANT := sigreg_small
demo: shards
	$(PY) -m engine.eval.study --variants $(DEMO_VARIANT) --regimes ucf --seeds 3 --scale demo \
		--benchmarks synth-ucf --shards $(DATA)/shards --out runs/demo
	$(PY) -m engine.eval.learning_curve runs/demo_ucf_$(DEMO_VARIANT)_s0 --benchmarks synth-ucf \
		--shards $(DATA)/shards --fractions 0,0.1,0.25,0.5,1.0 --probe-seeds 1 --probe-epochs 20 \
		--out runs/demo/learning_curve
	$(PY) -m engine.eval.verdict runs/demo --curve runs/demo/learning_curve/learning_curve.png

# Every test (the slow ones too: real DeepSpeed launches, signals, resumes), within 15 minutes on 2 cores.
test: install
	$(PY) -m pytest -q

# The tests not marked slow: everything but the real training runs.
test-quick: install
	$(PY) -m pytest -q -m "not slow"

clean-demo:
	rm -rf $(DATA)/raw $(DATA)/shards
