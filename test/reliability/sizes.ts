/**
 * Sizes of each part of the reliability suite: `CI` keeps the vitest run bounded (a few
 * minutes on two cores), `SOAK` is what `npm run soak` runs and reports.
 */
export const CI = {
  history: { clients: 6, keys: 4, ops: 500, faults: 3 },
  crash: { rounds: 4, opsPerRound: 60, services: 6, workers: 3, rate: 30 },
};

export const SOAK = {
  history: { clients: 8, keys: 6, ops: 1500, faults: 8 },
  crash: { rounds: 20, opsPerRound: 500, services: 10, workers: 5, rate: 60 },
};
