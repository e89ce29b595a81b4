# PostgreSQL 15 from Debian, standing in for the official postgres image where no registry is reachable
# (scripts/build-local-images.sh). The same contract as the official image for what the stack uses:
# POSTGRES_USER / POSTGRES_PASSWORD / POSTGRES_DB create the role and database on first start, data in
# /var/lib/postgresql/data (a volume), port 5432, password (scram) logins from the network, pg_isready.
ARG BASE_IMAGE=helical-base:bookworm-py312
FROM ${BASE_IMAGE}
COPY docker/local/apt-install.sh /tmp/apt-install.sh
RUN sh /tmp/apt-install.sh postgresql-15 && rm /tmp/apt-install.sh \
 && mkdir -p /var/lib/postgresql/data /var/run/postgresql \
 && chown -R postgres:postgres /var/lib/postgresql /var/run/postgresql && chmod 700 /var/lib/postgresql/data
COPY docker/local/postgres-entrypoint.sh /usr/local/bin/postgres-entrypoint.sh
ENV PATH=/usr/lib/postgresql/15/bin:$PATH PGDATA=/var/lib/postgresql/data
USER postgres
EXPOSE 5432
STOPSIGNAL SIGINT
ENTRYPOINT ["sh", "/usr/local/bin/postgres-entrypoint.sh"]
