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
# No heap flag: Node sizes V8's heap from the container's memory limit (cgroup v1 or v2, read by libuv): under
# `fusebox inject`'s 384Mi, 256 MiB of old space and 1 MiB semi-spaces. The --max-semi-space-size=16 this image used to
# set was measured on a 24 GiB host (where V8 picks 32 MiB); in a pod it raised the young generation from 1 to 16 MiB
# semi-spaces: +17 MB idle and +25 MB RSS after 10 s at 1,000 req/s in bench/ (which runs with the pod's heap), at a
# CPU per request the development machine could not tell apart.
# At most 2 glibc malloc arenas: V8's compiler threads peak at ~35 MB of zone memory while the code warms up, and
# with an arena per thread glibc keeps most of it once freed; 2 arenas hold ~6 MB less after 10 s at 1,000 req/s
# (bench/, 4 runs), at no visible CPU cost. bench/ runs Fusebox with this image's ENV lines (it reads them).
ENV MALLOC_ARENA_MAX=2
WORKDIR /app
COPY --from=prod-deps /app/node_modules ./node_modules
COPY --from=build /app/dist ./dist
COPY package.json ./
COPY config ./config
# The live page (GET / on the admin port): static files, read from the package root like config/.
COPY ui ./ui
# The `node` user of the official image, by number: the kubelet can verify `runAsNonRoot: true` only for a
# numeric USER (a name fails the pod with "image has non-numeric user"). `fusebox inject` pins runAsUser anyway.
USER 1000:1000
EXPOSE 4000 9901
HEALTHCHECK --interval=10s --timeout=2s --retries=3 \
  CMD ["node", "-e", "fetch('http://127.0.0.1:9901/healthz').then(r => process.exit(r.ok ? 0 : 1), () => process.exit(1))"]
ENTRYPOINT ["node", "dist/src/main.js"]
CMD ["--config", "/app/config/example.yaml"]
