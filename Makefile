# HAPNet-D2 developer commands. Every target installs into .venv first if needed (idempotent).
PY := .venv/bin/python
# OpenMP threads spin only briefly before they sleep, unless you chose a policy (README "Speed")
ifeq ($(origin OMP_WAIT_POLICY)$(origin GOMP_SPINCOUNT),undefinedundefined)
export GOMP_SPINCOUNT := 10000
endif
STAMP := .venv/.hapnet-installed

.PHONY: install quickstart quickstart-panoptic test test-fast synth-ablation synth-ablation-panoptic clean

$(STAMP): dev/install.sh dev/check_python.sh setup.py requirements/constraints.txt
	@dev/check_python.sh "$$( [ -x $(PY) ] && echo $(PY) || echo $${PYTHON:-python3} )"
	./dev/install.sh
	touch $(STAMP)

install: $(STAMP)

## quickstart: generate the synthetic RGB-T data, train the tiny model on CPU, evaluate, visualise
quickstart: install
	$(PY) tools/quickstart.py --output output/quickstart

## quickstart-panoptic: the same for panoptic + instance + semantic output (PQ/SQ/RQ by day and night, mask AP, mIoU)
quickstart-panoptic: install
	$(PY) tools/quickstart.py --task panoptic --output output/quickstart-panoptic

## test: the whole suite, slow end-to-end tests included, on 2 pytest-xdist workers of one torch
## thread each (many tests wait on subprocess start-up)
test: install
	$(PY) -m pytest tests -q -n 2

## test-fast: skip tests marked slow
test-fast: install
	$(PY) -m pytest tests -q -n 2 -m "not slow"

## synth-ablation: input strategies D / E / I of the paper's Table 5 on the synthetic data
synth-ablation: install
	$(PY) tools/synth_ablation.py --output output/synth_ablation

## synth-ablation-panoptic: strategies D and E of the tiny panoptic model, 3000 iterations each (PQ by day and night)
synth-ablation-panoptic: install
	$(PY) tools/synth_ablation.py --task panoptic --output output/synth_ablation_panoptic

clean:
	rm -rf output .pytest_cache
