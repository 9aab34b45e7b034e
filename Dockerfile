# onerelay container: a Rudder relay in one unprivileged process.
#   docker build -t onerelay .
#   docker run -d --name relay --read-only \
#     -v relay-data:/var/rudder -v relay-identity:/var/lib/onerelay/identity \
#     -e RUDDER_RELAY_SERVER=rudder.example.com -e RUDDER_RELAY_DAV_PASSWORD=... \
#     -e RUDDER_RELAY_SERVER_CERTIFICATE="$(base64 -w0 policy_server.pem)" \
#     -p 443:8443 -p 5309:5309 onerelay
# See README.md "Container" for every variable.

FROM node:20-bookworm-slim AS build
WORKDIR /src
COPY package.json package-lock.json tsconfig.json tsconfig.build.json ./
COPY src ./src
# `npm ci` runs the prepare script, which compiles src/ to dist/
RUN npm ci --no-audit --no-fund

FROM node:20-bookworm-slim
COPY --from=build /src/dist /build/dist
COPY --from=build /src/package.json /src/package-lock.json /build/
# the activity database's native module, built (or fetched prebuilt) by `npm ci` in the build stage
COPY --from=build /src/node_modules/better-sqlite3/build/Release/better_sqlite3.node /build/node_modules/better-sqlite3/build/Release/
COPY config /build/config
COPY README.md /build/
COPY docker/install.sh /usr/local/bin/onerelay-install
RUN onerelay-install /opt/onerelay /build && rm -rf /build /root/.npm \
 && groupadd --system --gid 10001 onerelay && useradd --system --uid 10001 --gid onerelay --home-dir /nonexistent onerelay \
 && mkdir -p /var/rudder /var/lib/onerelay/identity && chown onerelay:onerelay /var/rudder /var/lib/onerelay/identity
USER onerelay
VOLUME ["/var/rudder", "/var/lib/onerelay/identity"]
ENV ONERELAY_HTTPS_PORT=8443 ONERELAY_CFENGINE_PORT=5309 ONERELAY_API_PORT=3030 \
    ONERELAY_DATA_DIR=/var/rudder ONERELAY_IDENTITY_DIR=/var/lib/onerelay/identity
# two malloc arenas: see packaging/onerelay.service
ENV MALLOC_ARENA_MAX=2 MALLOC_MMAP_THRESHOLD_=131072 MALLOC_TRIM_THRESHOLD_=131072
EXPOSE 8443 5309
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s \
  CMD ["node", "/opt/onerelay/dist/cli.js", "health"]
# 2 MB semi-spaces: see packaging/onerelay.service
ENTRYPOINT ["node", "--max-semi-space-size=2", "/opt/onerelay/dist/cli.js", "container"]
