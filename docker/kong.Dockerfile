# Kong 3.x with Node.js and payg-pluginserver, built from the lockfile.
# Node 26 "Lithium": Active LTS from 2026-10-28, maintained until 2029-04-30 (docs/runtime.md).
FROM node:26-trixie-slim AS build
WORKDIR /src
# better-sqlite3 (a production dependency) compiles when no prebuilt binary fits.
RUN apt-get update && apt-get install -y --no-install-recommends python3 make g++ && rm -rf /var/lib/apt/lists/*
# .npmrc turns on strict install-script approval: only what package.json's allowScripts approves runs.
COPY package.json package-lock.json .npmrc ./
RUN npm ci --no-audit --no-fund
COPY tsconfig.json tsconfig.build.json ./
COPY plugin ./plugin
COPY control-service ./control-service
RUN npx tsc -p tsconfig.build.json && npm prune --omit=dev

FROM kong:3.9
USER root
# Node's release binaries need only an old glibc, so the one from the node image runs on Kong's Ubuntu base.
COPY --from=build /usr/local/bin/node /usr/local/bin/node
COPY --from=build /src/node_modules /opt/kong-payg/node_modules
COPY --from=build /src/dist /opt/kong-payg/dist
COPY --from=build /src/plugin/bin /opt/kong-payg/plugin/bin
COPY --from=build /src/package.json /opt/kong-payg/package.json
RUN ln -s /opt/kong-payg/plugin/bin/payg-pluginserver /usr/local/bin/payg-pluginserver \
 && payg-pluginserver --dump-all-plugins > /dev/null
USER kong
