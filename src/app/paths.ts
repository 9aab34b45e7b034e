// Small mappings from the configuration to what modules take, shared by app, check and cli.
import type { Config } from '../config/index.js';
import type { IdentityPaths } from '../identity/index.js';

export function identityPaths(config: Config): IdentityPaths {
  return {
    nodeId: config.general.nodeId,
    nodeIdFile: config.general.nodeIdFile,
    privateKeyFile: config.identity.privateKeyFile,
    publicKeyFile: config.identity.publicKeyFile,
    certificateFile: config.identity.certificateFile,
  };
}
