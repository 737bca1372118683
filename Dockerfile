# oxidicom_py receiver image. Configure it with OXIDICOM_* variables (see README).
FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY oxidicom_py ./oxidicom_py
RUN pip install --no-cache-dir . && useradd --system --create-home oxidicom && mkdir -p /data && chown oxidicom /data
USER oxidicom
ENV OXIDICOM_FILES_ROOT=/data OXIDICOM_STATE_DIR=/home/oxidicom/state
EXPOSE 11111 9100
ENTRYPOINT ["oxidicom-py", "serve"]
