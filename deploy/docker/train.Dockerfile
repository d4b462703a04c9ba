# CleanInbox training image: torch (CPU wheel) + transformers, for `cleaninbox train`,
# `evaluate` and (later) `retrain`. Writes bundles to /var/lib/cleaninbox/models.
#   docker build -f deploy/docker/train.Dockerfile -t cleaninbox-train .
#   docker run --rm -v cleaninbox-state:/var/lib/cleaninbox \
#     -v /path/to/banking77:/data/banking77:ro cleaninbox-train \
#     train --config configs/train.yaml --output /var/lib/cleaninbox/models --promote
FROM python:3.11-slim
WORKDIR /opt/cleaninbox/src
COPY pyproject.toml README.md ./
COPY daemon ./daemon
COPY training ./training
COPY configs ./configs
# The CPU build of torch from PyTorch's index (PyPI's default wheel pulls CUDA, several GB).
RUN python -m venv /opt/cleaninbox \
 && /opt/cleaninbox/bin/pip install --no-cache-dir --index-url https://download.pytorch.org/whl/cpu torch==2.13.0 \
 && /opt/cleaninbox/bin/pip install --no-cache-dir '.[train,postgresql]'
RUN groupadd --system --gid 10001 cleaninbox \
 && useradd --system --uid 10001 --gid 10001 --home-dir /var/lib/cleaninbox --create-home cleaninbox
USER 10001:10001
ENV PATH=/opt/cleaninbox/bin:$PATH BANKING77_DIR=/data/banking77 HF_HOME=/var/lib/cleaninbox/hf
ENTRYPOINT ["cleaninbox"]
CMD ["train", "--config", "configs/train.yaml", "--output", "/var/lib/cleaninbox/models", "--promote"]
