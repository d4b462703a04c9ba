# CleanInbox training image: torch (CPU wheel) + transformers, for `cleaninbox train`,
# `evaluate` and `retrain`. Writes bundles to /var/lib/cleaninbox/models.
#   make image                      (both images; docker, else podman; prints their names)
#   docker build -f deploy/docker/train.Dockerfile -t cleaninbox-train .
#   docker run --rm -v cleaninbox-state:/var/lib/cleaninbox cleaninbox-train \
#     train --config configs/train.yaml --output /var/lib/cleaninbox/models --promote
# banking77 is in the image (data/banking77, CC BY 4.0); mount another copy on
# /data/banking77 and set BANKING77_DIR=/data/banking77 to train on that instead.
# BASE and PIP_INSTALL_ARGS: as in deploy/docker/Dockerfile.
# RUN --mount needs BuildKit (Docker 23 and later by default) or podman/buildah.
ARG BASE=python:3.11-slim
FROM ${BASE}
ARG PIP_INSTALL_ARGS=""
WORKDIR /opt/cleaninbox/src
COPY pyproject.toml README.md ./
COPY daemon ./daemon
COPY training ./training
# The locked set (requirements/train.txt), torch's CPU build from PyTorch's index (PyPI's
# default wheel pulls CUDA, several GB), then CleanInbox itself without resolving. One
# stage, requirements/ mounted rather than copied: a second stage would copy and commit
# the 1.8 GB environment twice, and a copied wheelhouse would stay in a layer.
RUN --mount=type=bind,source=requirements,target=/opt/cleaninbox/src/requirements \
    python3 -m venv /opt/cleaninbox \
 && /opt/cleaninbox/bin/pip install --no-cache-dir \
      --extra-index-url https://download.pytorch.org/whl/cpu $PIP_INSTALL_ARGS \
      -r requirements/train.txt \
 && /opt/cleaninbox/bin/pip install --no-cache-dir $PIP_INSTALL_ARGS --no-deps . \
 && rm -rf build *.egg-info \
 && groupadd --system --gid 10001 cleaninbox \
 && useradd --system --uid 10001 --gid 10001 --home-dir /var/lib/cleaninbox --create-home cleaninbox
COPY configs ./configs
COPY data/banking77 ./data/banking77
COPY data/robustness ./data/robustness
USER 10001:10001
ENV PATH=/opt/cleaninbox/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    BANKING77_DIR=/opt/cleaninbox/src/data/banking77 \
    HF_HOME=/var/lib/cleaninbox/hf
ENTRYPOINT ["cleaninbox"]
CMD ["train", "--config", "configs/train.yaml", "--output", "/var/lib/cleaninbox/models", "--promote"]
