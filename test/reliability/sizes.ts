/**
 * Sizes of each part of the reliability suite: `CI` keeps the vitest run bounded (a few
 * minutes on two cores), `SOAK` is what `npm run soak` runs and reports.
 */
export const CI = {
  history: { clients: 6, keys: 4, ops: 500, faults: 3 },
  crash: { rounds: 4, opsPerRound: 60, services: 6, workers: 3, rate: 30 },
  fuzz: { api: 6000, parser: 4000, protocol: 4000, channel: 2000, guestAgent: 2000, join: { joins: 800, certs: 10, storeCalls: 1200 } },
  load: { watchers: 250, writesPerSec: 100, seconds: 30, warmupSeconds: 20, services: 50 },
};

export const SOAK = {
  history: { clients: 8, keys: 6, ops: 1500, faults: 8 },
  crash: { rounds: 20, opsPerRound: 500, services: 10, workers: 5, rate: 60 },
  fuzz: { api: 100_000, parser: 30_000, protocol: 30_000, channel: 20_000, guestAgent: 20_000, join: { joins: 10_000, certs: 50, storeCalls: 15_000 } },
  load: { watchers: 1000, writesPerSec: 100, seconds: 300, warmupSeconds: 60, services: 50 },
};
