# Kong 3.x with Node.js and payg-pluginserver, built from the lockfile.
FROM node:20-bookworm-slim AS build
WORKDIR /src
COPY package.json package-lock.json ./
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
