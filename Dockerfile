# The snaparchive image: the worker, the CLI and the simulator.
FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY worker ./worker
COPY jobs ./jobs
RUN pip install --no-cache-dir .
ENTRYPOINT ["snaparchive"]
CMD ["worker"]
