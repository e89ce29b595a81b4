# The image of the Pushgateway janitor and the secrets checks (monitoring/pushgateway/pushgateway_janitor.py
# needs the standard library only), standing in for python:3.12-slim-bookworm
# (scripts/build-local-images.sh): the local base plus `python` on PATH, as the official image has it.
ARG BASE_IMAGE=helical-base:bookworm-py312
FROM ${BASE_IMAGE}
RUN ln -s python3.12 /usr/local/bin/python
USER 65534:65534
CMD ["python"]
