# tokenmeter worker image for the production stack (docker-compose.yml).
FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md constraints.txt ./
COPY pipeline ./pipeline
COPY sql ./sql
RUN rm -f pipeline/sql && cp -r sql pipeline/sql && pip install --no-cache-dir . -c constraints.txt
ENV TOKENMETER_WEB_HOST=0.0.0.0
EXPOSE 6066
ENTRYPOINT ["tokenmeter"]
CMD ["worker"]
