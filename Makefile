# `make demo` and `make test` work on a fresh clone: each creates .venv when it is missing.
PY := .venv/bin/python
# torch/torchvision pinned to the builds served from this machine's disk; the project's own
# ranges admit them, so `pip install -e .` never pulls another torch.
TORCH := torch==2.14.1 torchvision==0.29.1

.PHONY: demo test lint install clean

.venv/.installed: pyproject.toml
	test -d .venv || python3 -m venv .venv
	$(PY) -m pip install -q $(TORCH)
	$(PY) -m pip install -q -e '.[dev,ray,mtcnn]' $(TORCH)
	touch $@

install: .venv/.installed

FERPLUS := ../shared/data/ferplus/fer2013new.csv
FERPLUS_FLAG := $(if $(wildcard $(FERPLUS)),--ferplus $(FERPLUS),)
STUDY := results/study

# Main job: ensemble the study's committed member predictions and write the report
# (no dataset needed; FER+ votes are used when ../shared has them).
demo: install
	.venv/bin/ferens ensemble $(STUDY)/members/* --method stack --out ensembles/demo-stack
	.venv/bin/ferens report $(STUDY)/members/* $(wildcard $(STUDY)/ensembles/*) \
		$(wildcard $(STUDY)/adjusted/*) ensembles/demo-stack --out reports/demo $(FERPLUS_FLAG)
	@echo "open reports/demo/report.html"

test: install
	OMP_NUM_THREADS=1 $(PY) -m pytest -q
	.venv/bin/ruff check ferens tests experiments

lint: install
	.venv/bin/ruff check ferens tests experiments

clean:
	rm -rf runs ensembles reports .pytest_cache
