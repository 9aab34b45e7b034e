// Reference data from Rudder's relayd test suite, copied into this repository (test/fixtures/relayd/README.md):
// every test reads fixtures from the clone itself, never from a folder beside it.

import { resolve } from 'node:path';

export const FIXTURES = resolve(import.meta.dirname, '..', 'fixtures', 'relayd');
