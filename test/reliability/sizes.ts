/**
 * Sizes of each part of the reliability suite: `CI` keeps the vitest run bounded (a few
 * minutes on two cores), `SOAK` is what `npm run soak` runs and reports.
 */
export const CI = {
  history: { clients: 6, keys: 4, ops: 500, faults: 3 },
};

export const SOAK = {
  history: { clients: 8, keys: 6, ops: 1500, faults: 8 },
};
