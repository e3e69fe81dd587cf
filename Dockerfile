# Fusebox sidecar image: Node 24 LTS, production dependencies only, non-root, read-only root filesystem friendly
# (Fusebox writes nothing to disk unless store.snapshotPath points at a mounted volume).
# Build: docker build -t fusebox:0.1.0 .
# Run:   docker run --rm -e FUSEBOX_LISTEN_HOST=0.0.0.0 -p 127.0.0.1:4000:4000 -p 127.0.0.1:9901:9901 fusebox:0.1.0
#        (the example config binds 127.0.0.1 unless FUSEBOX_LISTEN_HOST says otherwise: right for a sidecar, whose
#        agent shares its network namespace; a port published with -p needs 0.0.0.0). Your own config:
#        -v $PWD/fusebox.yaml:/etc/fusebox/config.yaml:ro fusebox:0.1.0 --config /etc/fusebox/config.yaml

FROM node:24-bookworm-slim AS build
WORKDIR /app
COPY package.json package-lock.json ./
# Scripts skipped: the only one is the `node` dev dependency fetching a second Node 24, which the image already has.
RUN npm ci --ignore-scripts
COPY tsconfig.json tsconfig.build.json ./
COPY src ./src
RUN npx tsc -p tsconfig.build.json

FROM node:24-bookworm-slim AS prod-deps
WORKDIR /app
COPY package.json package-lock.json ./
RUN npm ci --omit=dev --ignore-scripts && npm cache clean --force

FROM node:24-bookworm-slim
ENV NODE_ENV=production
# V8 grows its young generation to 64 MiB per semi-space on a big host; 16 MiB cut RSS under load by ~80 MB in
# bench/ at the same CPU per request. bench/ runs Fusebox with exactly this value (it reads this line).
ENV NODE_OPTIONS=--max-semi-space-size=16
WORKDIR /app
COPY --from=prod-deps /app/node_modules ./node_modules
COPY --from=build /app/dist ./dist
COPY package.json ./
COPY config ./config
# The `node` user of the official image, by number: the kubelet can verify `runAsNonRoot: true` only for a
# numeric USER (a name fails the pod with "image has non-numeric user"). `fusebox inject` pins runAsUser anyway.
USER 1000:1000
EXPOSE 4000 9901
HEALTHCHECK --interval=10s --timeout=2s --retries=3 \
  CMD ["node", "-e", "fetch('http://127.0.0.1:9901/healthz').then(r => process.exit(r.ok ? 0 : 1), () => process.exit(1))"]
ENTRYPOINT ["node", "dist/src/main.js"]
CMD ["--config", "/app/config/example.yaml"]
