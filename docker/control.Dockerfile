# The payg control service, built from the lockfile.
# Node 26 "Lithium": Active LTS from 2026-10-28, maintained until 2029-04-30 (docs/runtime.md).
FROM node:26-trixie-slim AS build
WORKDIR /src
RUN apt-get update && apt-get install -y --no-install-recommends python3 make g++ && rm -rf /var/lib/apt/lists/*
# .npmrc turns on strict install-script approval: only what package.json's allowScripts approves runs.
COPY package.json package-lock.json .npmrc ./
RUN npm ci --no-audit --no-fund
COPY tsconfig.json tsconfig.build.json ./
COPY plugin ./plugin
COPY control-service ./control-service
COPY console ./console
# The operator console's assets go to dist/console, which the service serves at /console/.
RUN npx tsc -p tsconfig.build.json && npx tsc -p console/tsconfig.json && npx vite build --config console/vite.config.mjs && npm prune --omit=dev

FROM node:26-trixie-slim
WORKDIR /opt/kong-payg
COPY --from=build /src/node_modules ./node_modules
COPY --from=build /src/dist ./dist
COPY --from=build /src/control-service/bin ./control-service/bin
COPY --from=build /src/package.json ./package.json
RUN mkdir -p /var/lib/payg && chown node:node /var/lib/payg
USER node
EXPOSE 8080
CMD ["node", "control-service/bin/payg-control", "--config", "/etc/payg/payg.yml"]
