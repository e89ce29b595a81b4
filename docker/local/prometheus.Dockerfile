# Prometheus 2.42 from Debian, standing in for prom/prometheus (scripts/build-local-images.sh): the compose
# file passes the flags; wget for its healthcheck. Runs as nobody like the official image; /prometheus
# (the TSDB volume) belongs to it.
ARG BASE_IMAGE=helical-base:bookworm-py312
FROM ${BASE_IMAGE}
COPY docker/local/apt-install.sh /tmp/apt-install.sh
RUN sh /tmp/apt-install.sh prometheus wget && rm /tmp/apt-install.sh \
 && mkdir -p /prometheus && chown 65534:65534 /prometheus
USER 65534:65534
WORKDIR /prometheus
EXPOSE 9090
ENTRYPOINT ["/usr/bin/prometheus"]
CMD ["--config.file=/etc/prometheus/prometheus.yml", "--storage.tsdb.path=/prometheus"]
