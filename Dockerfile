# The service with the published model baked in. CPU build by default; for an NVIDIA GPU,
# build with --build-arg TORCH_INDEX=default (CUDA 13.0 wheels: host driver >= 580) - see
# docker-compose.yml.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /srv

# Dependencies in their own layer: it is rebuilt only when pyproject.toml changes.
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
COPY pyproject.toml ./
RUN python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" > requirements.txt \
 && if [ "$TORCH_INDEX" = "default" ]; then pip install "torch>=2.4,<2.15"; \
    else pip install --index-url "$TORCH_INDEX" "torch>=2.4,<2.15"; fi \
 && pip install -r requirements.txt

# The service only: no training code, no tests.
COPY README.md ./
COPY vae_common/ vae_common/
COPY app/ app/
COPY models/ models/
RUN pip install --no-deps . && useradd --system --uid 10001 --no-create-home vae
USER vae

ENV VAE_HOST=0.0.0.0 \
    VAE_PORT=8000 \
    VAE_MODEL_PATH=/srv/models/model.pt \
    VAE_DEVICE=auto
EXPOSE 8000

# No curl in the slim image: ask /healthz with the Python that is already there.
HEALTHCHECK --interval=15s --timeout=3s --start-period=30s --retries=3 \
  CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen(f\"http://127.0.0.1:{os.environ.get('VAE_PORT', '8000')}/healthz\", timeout=2)"]

CMD ["python", "-m", "app"]
