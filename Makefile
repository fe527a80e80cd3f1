# Shortcuts; the README's two commands do not need make.
.PHONY: setup run test loadtest loadtest-quick

setup:
	bash scripts/setup.sh

run: setup
	bash scripts/run.sh

test:
	bash scripts/test.sh

# Steady, overload and fault scenarios against a local server, 60 s each; CSV + HTML reports in
# loadtests/results/. Override: make loadtest USERS=4 DURATION=30 P95_MS=20000
USERS ?= 8
DURATION ?= 60
P95_MS ?= 30000
loadtest: setup
	.venv/bin/python -m loadtests.run --scenario all --users $(USERS) --duration $(DURATION) --p95-ms $(P95_MS)
