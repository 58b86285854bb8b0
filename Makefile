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

DATA := ../shared/data/fer2013/fer2013.csv.gz
FERPLUS := ../shared/data/ferplus/fer2013new.csv
DATA_FLAG := $(if $(wildcard $(DATA)),--data $(DATA),)
FERPLUS_FLAG := $(if $(wildcard $(FERPLUS)),--ferplus $(FERPLUS),)
V2 := results/study_v2
V3 := results/study_v3

# Main job, under 2 minutes on an idle 2-core box: (1) re-score the shipped model on PrivateTest
# (needs the data), (2) fit a new ensemble on PublicTest over the committed members of different
# architectures (study v2's long resnet18s and study v3's), (3) report on study v2 and that
# ensemble, with face thumbnails and FER+ when ../shared has the data. Nothing is trained.
demo: install
	@if [ -n "$(DATA_FLAG)" ]; then \
	  .venv/bin/ferens evaluate --split test $(DATA_FLAG) --out reports/demo-shipped-model.json; \
	else echo "demo: no $(DATA); skipping the shipped model's re-scoring (ferens evaluate)"; fi
	.venv/bin/ferens ensemble $(V2)/members/crop44-e90* $(V3)/members/* --method greedy \
		--out ensembles/demo-diverse
	.venv/bin/ferens report $(V2)/members/* $(V2)/ensembles/* ensembles/demo-diverse \
		--out reports/demo $(DATA_FLAG) $(FERPLUS_FLAG)
	@echo "open reports/demo/report.html; ferens itself is .venv/bin/ferens (or: source .venv/bin/activate)"

# -rs lists every skipped test with its reason (the browser rendering tests need chromium,
# the real-data tests need ../shared/data).
test: install
	@command -v chromium >/dev/null || echo "make test: no chromium on the PATH; the 2 browser rendering tests will be skipped (apt-get install chromium)"
	OMP_NUM_THREADS=1 $(PY) -m pytest -q -rs
	.venv/bin/ruff check ferens tests experiments

lint: install
	.venv/bin/ruff check ferens tests experiments

clean:
	rm -rf runs ensembles reports .pytest_cache
