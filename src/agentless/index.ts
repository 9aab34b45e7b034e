// Face of the agentless module: onerelay as a Rudder node without an agent (spec-agentless-node.md). Its own
// policies (what the root generated for this relay, §B) are read here and applied by the composition root;
// the inventory (§A) and the run log (§C) use the same state through the OwnPolicies interface.

export type { ComponentOutcome, InventoryStatus, OwnPolicies, OwnPolicyState, ReportMode } from './types.js';
export { allowedNetworkOf, createOwnPolicies, ownPoliciesStatus, parseOwnPolicies, PROMISES_GENERATED, RUDDER_JSON } from './own-policies.js';
export type { OwnPoliciesOptions, OwnPoliciesService, OwnPoliciesStatus } from './own-policies.js';
export { DEFAULT_RUN_INTERVAL_MS, hostAddresses, parentAddressOf, resolveOwnSettings, rudderAcl, rudderPolicyServerAcl, settingsStatus } from './settings.js';
export type { AppliedSetting, OwnSettings, SettingSource, SettingsInputs } from './settings.js';

// The relay's own run log (compliance):
export { createOwnCompliance } from './compliance.js';
export type { OwnCompliance, OwnComplianceDeps, OwnComplianceOptions, OwnComplianceProbes, OwnComplianceStatus, OwnRun } from './compliance.js';
export { expectedReports, CHECKED_RUDDER_VERSIONS } from './compliance-expected.js';
export type { ComponentProbe, ExpectedComponent, ExpectedReports } from './compliance-expected.js';
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
