# haproxy from Debian for the docker-socket-proxy service, standing in for the official haproxy image
# (scripts/build-local-images.sh): the same config path (/usr/local/etc/haproxy/haproxy.cfg, mounted by
# docker-compose-airflow.yaml) and the same command (master-worker, foreground).
ARG BASE_IMAGE=helical-base:bookworm-py312
FROM ${BASE_IMAGE}
COPY docker/local/apt-install.sh /tmp/apt-install.sh
RUN sh /tmp/apt-install.sh haproxy && rm /tmp/apt-install.sh && mkdir -p /usr/local/etc/haproxy
STOPSIGNAL SIGUSR1
ENTRYPOINT ["haproxy", "-W", "-db", "-f", "/usr/local/etc/haproxy/haproxy.cfg"]
