import { it } from 'vitest';
import { createNetworkManager } from '../../src/network/network-manager.js';
import { testLogger } from './helpers.js';
it('debug', async () => {
  const m = createNetworkManager({ stateDir: '/tmp/cpdbg', logger: testLogger, bridge: 'cpdbg', subnet: '10.213.250.0/24' });
  await m.setup('dbg-a', { ports: [{containerPort: 8080, hostPort: 23456, protocol: 'tcp'}], isolationKey: 'k' });
  await m.setup('dbg-b', { ports: [], isolationKey: 'j' });
});
