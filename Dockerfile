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
# V8's heap as Node sizes it under `fusebox inject`'s 384Mi (from the cgroup limit: any limit up to 512 MiB gives 256 MiB
# of old space and 1 MiB semi-spaces), made independent of the limit. Without the flags, a container with no limit is
# sized from the host's RAM and a limit above 512Mi from the limit: on a 24 GiB machine, V8 let the heap grow to
# ~300 MB RSS after load (~200 MB with the semi-space flag alone: old space grows as freely) instead of ~118 MB.
# Measured with caps(memory), 20,000 + 20,000 calls (2026-12-05, RSS after both): no limit 301 MB, no limit with these
# flags 118, a 384 MiB cgroup 113-120; semi-spaces in that cgroup: 1 MiB 115-117 MB, 2 MiB 121-132, 4 MiB 124-128,
# 8 MiB 128-130, 16 MiB 145-160, CPU per call 311-446 us for all of them, inside this loaded machine's noise.
# On the quiet machine (21:34 UTC, no limit, 256 MiB old space, 2 rounds), CPU per call warm: 1 MiB 283-288 us, 4 MiB
# 249-255, 8 MiB 230; RSS after load 118-129 / 121-125 / 132-138 MB, idle 88 / 93 / 102. 4 MiB: 12 % less CPU for
# ~5 MB of idle RSS and the same RSS after load (1 MiB promotes in-flight calls' objects to old space under load). The
# idle 5 MB are given back since: once listening, the sidecar runs one memory-reducing GC (src/cli/settle-heap.ts)
# that shrinks the young generation to 1 MiB; it grows back under load only.
# To give the heap more room (a larger limit for large bodies), set NODE_OPTIONS in the pod spec.
# bench/ runs Fusebox with this image's ENV lines (bench/pod.ts reads them).
ENV NODE_OPTIONS="--max-old-space-size=256 --max-semi-space-size=4"
# At most 2 glibc malloc arenas: V8's compiler threads peak at ~35 MB of zone memory while the code warms up, and
# with an arena per thread glibc keeps most of it once freed; 2 arenas hold ~6 MB less after 10 s at 1,000 req/s
# (bench/, 4 runs), at no visible CPU cost.
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
