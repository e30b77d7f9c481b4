# The SafeHub image: every deployable (`python -m services.<name>`,
# `python -m connectors.<name>`, `python -m vendors.<name>`) and the `safehub` CLI, for deploy/helm/safehub.
#
# Build from the repository root (the CAP schema and the EIDO facts ship inside the
# package, safehub/standards):
#   docker build -t safehub:0.1.0 .
ARG PYTHON_IMAGE=python:3.11-slim

FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src
COPY pyproject.toml README.md constraints.txt ./
# schemas/ goes into the wheel (safehub/_contracts/schemas), where the codec finds it.
COPY schemas/ schemas/
COPY safehub/ safehub/
COPY services/ services/
COPY connectors/ connectors/
COPY vendors/ vendors/
COPY simulators/ simulators/
RUN pip install --only-binary=:all: -c constraints.txt . \
    && python -c "import safehub.cli.main, services.gateway, connectors.psap_cad"

FROM ${PYTHON_IMAGE}
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1
RUN groupadd --system --gid 10001 safehub \
    && useradd --system --uid 10001 --gid 10001 --no-create-home \
       --home-dir /nonexistent --shell /usr/sbin/nologin safehub
COPY --from=build /opt/venv /opt/venv
WORKDIR /opt/safehub
COPY deploy/directory/ deploy/directory/
# Installed packages cannot find a checkout's deploy/ folder: name the file here, once for
# every deployable (the Helm chart mounts the real directory and sets it again).
ENV SAFEHUB_DIRECTORY_FILE=/opt/safehub/deploy/directory/demo.json
USER 10001:10001
CMD ["safehub", "--help"]
