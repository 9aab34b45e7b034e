// A simulated WAN link (the kernel here has no netem): a TCP proxy on 127.0.0.1 that holds every chunk
// `delaySeconds` in each direction before forwarding it, in order. Run as its own process so that its work
// does not share the event loop of the bench that measures through it:
//   node --import tsx bench/lib/latency-link.ts LISTEN_PORT TARGET_PORT DELAY_SECONDS   (0.05 = 100 ms round trip)

import { createConnection, createServer, type Socket } from 'node:net';

/** Forward `from` to `to`, each chunk released `delayMs` after it arrived; end `to` after the last one. */
function delayedPipe(from: Socket, to: Socket, delayMs: number): void {
  let pending = Promise.resolve();
  const release = (action: () => void, arrivedAt: number): void => {
    pending = pending.then(
      () =>
        new Promise<void>((done) => {
          const wait = arrivedAt + delayMs - Date.now();
          setTimeout(() => {
            if (!to.destroyed) action();
            done();
          }, Math.max(0, wait));
        }),
    );
  };
  from.on('data', (chunk: Buffer) => release(() => to.write(chunk), Date.now()));
  from.on('end', () => release(() => to.end(), Date.now()));
  from.on('error', () => to.destroy());
}

function main(): void {
  const [listenPort, targetPort, delaySeconds] = process.argv.slice(2).map(Number);
  if (!Number.isInteger(listenPort) || !Number.isInteger(targetPort) || !Number.isFinite(delaySeconds)) {
    console.error('usage: latency-link.ts LISTEN_PORT TARGET_PORT DELAY_SECONDS');
    process.exit(2);
  }
  const delayMs = (delaySeconds as number) * 1000;
  const server = createServer((client) => {
    const target = createConnection({ host: '127.0.0.1', port: targetPort as number });
    client.setNoDelay(true);
    target.setNoDelay(true);
    delayedPipe(client, target, delayMs);
    delayedPipe(target, client, delayMs);
    target.on('error', () => client.destroy());
    client.on('close', () => target.destroy());
    target.on('close', () => client.destroy());
  });
  server.listen(listenPort, '127.0.0.1');
  process.on('SIGTERM', () => process.exit(0));
}

main();
