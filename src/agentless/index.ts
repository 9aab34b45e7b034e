// Face of the agentless module: the relay as a Rudder node without an agent (spec-agentless-node.md).
// The relay's own inventory (registration):
export { createOwnInventory, fetchPolicyServerId, AGENT_VERSION, SENT_MESSAGE, type OwnInventory, type OwnInventoryDeps, type OwnInventoryOptions } from './inventory.js';
export { buildInventoryXml, type InventoryDocument } from './inventory-xml.js';
export { readHostFacts, type HostFacts } from './inventory-facts.js';
export { inventorySignature } from './inventory-sign.js';
