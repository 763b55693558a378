# The two commands a fresh machine needs: `make demo` and `make test` (README.md).
SHELL := /bin/bash
VENV := .venv
BIN := $(VENV)/bin

.PHONY: setup up down demo test lint bench clean

setup:
	@./scripts/bootstrap.sh

up: setup
	@$(BIN)/provision dev up

down:
	@$(BIN)/provision dev down

demo: up
	@./scripts/demo.sh

lint: setup
	@$(BIN)/ruff check provisioner tests bench
	@$(BIN)/ruff format --check provisioner tests bench

# pytest exits 5 when it collects nothing, which fails the target (and CI) as it should.
test: up lint
	@$(BIN)/pytest

bench: up
	@eval "$$($(BIN)/provision dev env)" && $(BIN)/python -m bench

clean: down
	rm -rf var
