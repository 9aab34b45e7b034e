// Face of the inventories module: the inventories pipeline (the two inventory queues, watched, each
// inventory forwarded upstream with its signature, cleaned after retention; spec-relayd.md §6).

export { createInventoriesPipeline } from './pipeline.js';
export type { InventoriesPipeline, InventoriesPipelineOptions, InventoryQueue } from './pipeline.js';
export { createInventoryHandler, inventoriesOf, signatureOf } from './queue-handler.js';
export type { InventoryCounters, InventoryHandlerOptions } from './queue-handler.js';
