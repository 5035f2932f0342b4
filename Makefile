# Two commands on a fresh clone (see README):
#   make serve   set everything up, then serve the API on http://localhost:8787 with the embedded model
#   make test    set everything up, then run every test suite (Python backend, then the Worker in workerd)
.PHONY: setup serve test
setup:
	bash scripts/setup.sh

serve: setup
	bash scripts/serve.sh

test: setup
	bash scripts/test_all.sh
