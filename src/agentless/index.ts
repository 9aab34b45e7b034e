// Face of the agentless module: the relay as a Rudder node without an agent (spec-agentless-node.md).
export type * from './types.js';
export { createOwnCompliance } from './compliance.js';
export type { OwnCompliance, OwnComplianceDeps, OwnComplianceOptions, OwnComplianceProbes, OwnComplianceStatus, OwnRun } from './compliance.js';
export { expectedReports, CHECKED_RUDDER_VERSIONS } from './compliance-expected.js';
export type { ComponentProbe, ExpectedComponent, ExpectedReports } from './compliance-expected.js';
export { createInputsOwnPolicies, stateFromRudderJson } from './compliance-inputs.js';
export type { RefreshableOwnPolicies } from './compliance-inputs.js';
export { buildRunlog, runlogFileName, execRunDate, agentTimestamp } from './runlog-build.js';
export type { ComponentResult, ResultStatus, RunlogInput } from './runlog-build.js';
export { signRunlogText } from './runlog-sign.js';
export type { RunlogSigner } from './runlog-sign.js';
export { createOwnComplianceProbes, loopbackOf } from './compliance-probes.js';
export type { ProbeTargets, SyncView } from './compliance-probes.js';
// The relay's own inventory (registration):
export { createOwnInventory, fetchPolicyServerId, AGENT_VERSION, SENT_MESSAGE, type OwnInventory, type OwnInventoryDeps, type OwnInventoryOptions } from './inventory.js';
export { buildInventoryXml, type InventoryDocument } from './inventory-xml.js';
export { readHostFacts, type HostFacts } from './inventory-facts.js';
export { inventorySignature } from './inventory-sign.js';
