# The Prometheus node exporter 1.5 from Debian, standing in for prom/node-exporter
# (scripts/build-local-images.sh); wget for its healthcheck; runs as nobody.
ARG BASE_IMAGE=helical-base:bookworm-py312
FROM ${BASE_IMAGE}
COPY docker/local/apt-install.sh /tmp/apt-install.sh
RUN sh /tmp/apt-install.sh prometheus-node-exporter wget && rm /tmp/apt-install.sh
USER 65534:65534
EXPOSE 9100
ENTRYPOINT ["/usr/bin/prometheus-node-exporter"]
