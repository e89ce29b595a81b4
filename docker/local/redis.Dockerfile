# Redis from Debian, standing in for the official redis image (scripts/build-local-images.sh): port 6379 on
# every address without protected mode (the official image's default; the network is the stack's own),
# data in /data, redis-cli for the healthcheck. Runs as Debian's redis user.
ARG BASE_IMAGE=helical-base:bookworm-py312
FROM ${BASE_IMAGE}
COPY docker/local/apt-install.sh /tmp/apt-install.sh
RUN sh /tmp/apt-install.sh redis-server && rm /tmp/apt-install.sh \
 && mkdir -p /data && chown redis:redis /data
USER redis
WORKDIR /data
EXPOSE 6379
ENTRYPOINT ["redis-server", "--bind", "0.0.0.0", "--protected-mode", "no", "--dir", "/data"]
