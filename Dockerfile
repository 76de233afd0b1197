# tollgate: OpenAI-compatible gateway. Multi-stage: compile with dev dependencies, ship only
# production dependencies plus the compiled dist/ on node:20-slim, as a non-root user.
#
#   docker build -t tollgate .
#   docker run --rm -p 8080:8080 -e OPENAI_API_KEY -e ADMIN_API_KEY tollgate

ARG NODE_IMAGE=node:20-slim

# --- build: dev dependencies + TypeScript -> dist/ -----------------------------------------
FROM ${NODE_IMAGE} AS build
WORKDIR /app
COPY package.json package-lock.json ./
# Scripts off here: `prepare` would compile before the sources are copied (the next layers do it).
RUN npm ci --ignore-scripts --no-audit --no-fund
COPY tsconfig.json tsconfig.build.json ./
COPY src ./src
RUN npm run build

# --- runtime: production dependencies + dist/ -----------------------------------------------
FROM ${NODE_IMAGE} AS runtime
ENV NODE_ENV=production
WORKDIR /app
COPY package.json package-lock.json ./
RUN npm ci --omit=dev --ignore-scripts --no-audit --no-fund && npm cache clean --force
COPY --from=build /app/dist ./dist
# The default configuration (config/gateway.yaml is read when GATEWAY_CONFIG names no other file);
# mount your own over it or point GATEWAY_CONFIG elsewhere.
COPY config/gateway.yaml ./config/gateway.yaml
# Everything stays root-owned and read-only for the process; the image's `node` user (uid 1000) runs it.
USER node
EXPOSE 8080
# Slim images have no curl: node itself probes /healthz (Node 20 has a global fetch).
HEALTHCHECK --interval=15s --timeout=3s --start-period=10s --retries=3 \
  CMD ["node", "-e", "fetch('http://127.0.0.1:' + (process.env.PORT || 8080) + '/healthz', { signal: AbortSignal.timeout(2500) }).then((r) => process.exit(r.ok ? 0 : 1), () => process.exit(1))"]
# Exec form: node is PID 1 and gets SIGTERM directly, so the drain (SPEC section 10) runs.
# Allow drainDelaySeconds + shutdownGraceSeconds (35 s by default) on stop, e.g. `docker stop -t 40`.
STOPSIGNAL SIGTERM
CMD ["node", "dist/main.js"]
