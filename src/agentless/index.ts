// Face of the agentless module: onerelay as a Rudder node without an agent (spec-agentless-node.md). Its own
// policies (what the root generated for this relay, §B) are read here and applied by the composition root;
// the inventory (§A) and the run log (§C) use the same state through the OwnPolicies interface.

export type { ComponentOutcome, InventoryStatus, OwnPolicies, OwnPolicyState, ReportMode } from './types.js';
export { createOwnPolicies, ownPoliciesStatus, parseOwnPolicies, PROMISES_GENERATED, RUDDER_JSON } from './own-policies.js';
export type { OwnPoliciesOptions, OwnPoliciesService, OwnPoliciesStatus } from './own-policies.js';
export { DEFAULT_RUN_INTERVAL_MS, hostAddresses, parentAddressOf, resolveOwnSettings, rudderAcl, rudderPolicyServerAcl, settingsStatus } from './settings.js';
export type { AppliedSetting, OwnSettings, SettingSource, SettingsInputs } from './settings.js';
