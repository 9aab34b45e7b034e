// Face of the config module: TOML loading (relayd main.conf keys + onerelay sections), defaults,
// durations, validation. Durations are milliseconds, paths absolute.

export type {
  Config,
  ConfigSource,
  ListenAddress,
  LoadedConfig,
  LogLevel,
  PeerAuthentication,
  ProxyRoute,
  QueueTiming,
} from './types.js';
export { ConfigError, RELAY_PATHS, isCidr, loadConfig, parseListen, parseSize, readConfig, resolveSource } from './load.js';
export type { ConfigProblem } from './load.js';
export { parseDuration } from './duration.js';
export { createNetworkAcl } from './networks.js';
export type { NetworkAcl } from './networks.js';
