# Table maintenance beside the daemon (scripts/maintain.py: compaction, manifest merge, snapshot
# expiry, deletion of unreferenced files), for docker-compose.yml. PyIceberg reads
# the daemon's own config file for the catalog and S3 settings.
FROM python:3.11-slim-bookworm
RUN pip install --no-cache-dir "pyiceberg[pyarrow]==0.12.0"
COPY scripts/maintain.py /app/maintain.py
COPY config/compose.toml /etc/admetrics/admetrics.toml
ENTRYPOINT ["python", "/app/maintain.py", "--config", "/etc/admetrics/admetrics.toml"]
