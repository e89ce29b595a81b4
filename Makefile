# The two commands a new machine needs (see README): `make demo` and `make test`.
# Everything they need is installed by scripts/ on first use and cached outside the clone.
.PHONY: demo demo-runner stack stack-down worker-host worker-host-down test test-fast bench bench-gpu bench-airflow images venvs clean-demo

demo:  ## the main job through Airflow on the embedded default (local S3 stand-in, tiny model, synthetic cells)
	bash scripts/airflow-demo.sh

demo-runner:  ## the same job with the runner CLI alone (no Airflow): chunk -> finetune -> predict
	bash scripts/demo.sh

stack:  ## the stack from the compose files (docker-compose, images built here): writes .env, waits for health, prints URLs
	bash scripts/stack.sh up

stack-down:  ## remove the stack's containers, networks and volumes
	bash scripts/stack.sh down

worker-host:  ## this machine as a worker host of a running stack (docker-compose-worker.yaml; README "Worker hosts")
	bash scripts/worker-host.sh up

worker-host-down:  ## remove this worker host's containers
	bash scripts/worker-host.sh down

test:  ## the whole test suite, as CI runs it
	bash scripts/test.sh

test-fast:  ## the inner loop: unit tests only, no slow integration
	bash scripts/test.sh -m "not slow"

bench:  ## benchmarks against helical's own loop; prints a table (see docs/BENCHMARKS.md)
	bash scripts/bench.sh

bench-gpu:  ## fp16 AMP vs fp32 vs bf16 and data parallel on gf-12L-38M-i4096's shape; runs on a bare GPU host's python3
	bash scripts/bench-gpu.sh

bench-airflow:  ## upload -> runner started through a real Airflow, beside a default S3KeySensor; DAG parse time
	bash scripts/bench-airflow.sh

images:  ## build the runner image here (local base, no registry); with a registry: docker compose -f docker-compose-build.yaml build
	bash scripts/build-runner-image.sh cpu

venvs:  ## build (or reuse) the virtualenvs only
	bash -c 'source scripts/lib.sh && ensure_runner_env'

clean-demo:
	rm -rf data/demo
