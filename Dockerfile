# dicom-chain gateway image (README, "In a container").
#   docker build -t dicom-chain .
#   docker run --init -p 11112:11112 -v dicom-chain:/var/lib/dicom-chain dicom-chain
# Settings come as DICOM_CHAIN_* variables, or a TOML file mounted and named by DICOM_CHAIN_CONFIG.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PATH=/opt/dicom-chain/.venv/bin:$PATH

# A user of its own: the gateway needs no root (11112 is above 1024), and owns only its state.
RUN useradd --system --uid 10001 --user-group --home-dir /var/lib/dicom-chain --shell /usr/sbin/nologin dicom-chain \
    && install -d -o dicom-chain -g dicom-chain -m 0750 /var/lib/dicom-chain

# What the package is built from, and nothing else (.dockerignore keeps var/, .venv/ and tests out).
WORKDIR /opt/dicom-chain
COPY pyproject.toml README.md ./
COPY dicom_chain ./dicom_chain
COPY scp ./scp
# All dependencies have manylinux wheels (numpy, lxml, psycopg[binary], the pylibjpeg decoders):
# no compiler in the image.
RUN python -m venv /opt/dicom-chain/.venv \
    && /opt/dicom-chain/.venv/bin/pip install /opt/dicom-chain \
    && rm -rf /opt/dicom-chain/build

USER dicom-chain
# Ledger (SQLite by default), node key, storage and spool: keep it on a volume, never in the layer.
VOLUME /var/lib/dicom-chain
EXPOSE 11112
# serve stops cleanly on SIGTERM (open associations finish, up to 120 s): give `docker stop -t 150`.
STOPSIGNAL SIGTERM
# Alive when the DICOM port accepts a connection. A bare TCP connect is neither logged nor recorded
# (a C-ECHO would be an association: a log line, and with an allow-list a rejection event, every
# 30 s). Give the port as DICOM_CHAIN_PORT when it is not 11112.
HEALTHCHECK --interval=30s --timeout=10s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import os, socket; socket.create_connection(('127.0.0.1', int(os.environ.get('DICOM_CHAIN_PORT', '11112'))), 5).close()"]
ENTRYPOINT ["dicom-chain"]
CMD ["serve", "--home", "/var/lib/dicom-chain"]
