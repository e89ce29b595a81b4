# Airflow's StatsD -> Prometheus, standing in for prom/statsd-exporter, which neither a reachable registry
# nor Debian ships (scripts/build-local-images.sh): monitoring/statsd/statsd_exporter.py, the implementation
# of the exporter's documented mapping that tests/monitoring check monitoring/statsd/mapping.yml with, run
# by Debian's python3 with python3-yaml. It takes the exporter's own flags (the compose file's command);
# wget for the healthcheck; runs as nobody.
ARG BASE_IMAGE=helical-base:bookworm-py312
FROM ${BASE_IMAGE}
COPY docker/local/apt-install.sh /tmp/apt-install.sh
RUN sh /tmp/apt-install.sh python3-yaml wget && rm /tmp/apt-install.sh
COPY monitoring/statsd/statsd_exporter.py /opt/statsd-exporter/statsd_exporter.py
USER 65534:65534
EXPOSE 9102 9125 9125/udp
ENTRYPOINT ["/usr/bin/python3", "-u", "/opt/statsd-exporter/statsd_exporter.py"]
CMD ["--statsd.mapping-config=/etc/statsd/mapping.yml"]
