# The gateway as a container: public port 8080, admin port 9090 (health, metrics, inspector).
# Mount your config at /etc/monetag-gateway/config.yaml and pass secrets as environment
# variables (MONETAG_SECRET). For the admin port to be reachable from outside the container,
# set `server.admin_listen: 0.0.0.0:9090` in the mounted config.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    GATEWAY_CONFIG=/etc/monetag-gateway/config.yaml

WORKDIR /opt/monetag-gateway
COPY pyproject.toml README.md ./
COPY gateway ./gateway
RUN pip install --no-cache-dir --disable-pip-version-check .
RUN useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin gateway \
    && mkdir -p /var/lib/monetag-gateway && chown gateway /var/lib/monetag-gateway
# the store (queued delivery, restart-proof dedup): mount a volume here
VOLUME /var/lib/monetag-gateway
COPY config.yaml /etc/monetag-gateway/config.yaml

USER gateway
EXPOSE 8080 9090
HEALTHCHECK --interval=10s --timeout=3s --start-period=5s --retries=3 \
    CMD ["monetag-gateway", "health"]
CMD ["monetag-gateway", "run"]
