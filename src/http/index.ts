// Face of the http module: the node-facing HTTPS front door and the local API listener.
export { createFrontDoor } from './front-door.js';
export type { FrontDoor, FrontDoorDeps, FrontDoorOptions, FrontDoorSettings, UploadAdmission } from './front-door.js';
export { createLocalApi } from './local-api.js';
export type { LocalApi, LocalApiDeps } from './local-api.js';
export type { UploadAuthOptions } from './client-auth.js';
export { createLeaseHolder, createLeaseKeeper, LEASE_CHUNK_BYTES } from './admission.js';
export type { LeaseBudget, LeaseGrant, LeaseHolder, LeaseKeeper, LeaseQueue, LeaseRequest } from './admission.js';
