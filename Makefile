# ntkdyn: `make test` and `make reproduce` set everything up from nothing (a .venv in the checkout).
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | cksum | cut -d' ' -f1)

.PHONY: test reproduce reproduce-quick install bench clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[test]'
	rm -f $(VENV)/.installed-* && touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	$(BIN)/python -m pytest tests

reproduce: $(STAMP)
	$(BIN)/ntkdyn reproduce --out runs/reproduce

reproduce-quick: $(STAMP)
	$(BIN)/ntkdyn reproduce --quick --out runs/reproduce-quick

clean:
	rm -rf runs/ .pytest_cache
