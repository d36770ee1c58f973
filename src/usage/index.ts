/**
 * Usage accounting and reports: allocation interval records (reserved usage), counter samples
 * (measured usage), exact per-tenant/group/cell reports and their formatting. Everything here
 * is pure except `sampleProcess` (reads /proc). See README.md.
 */
export * from './types.js';
export * from './intervals.js';
export { reservedUsage, checkWindow, subjectKey } from './reserved.js';
export { measuredUsage, DEFAULT_MAX_GAP_MS, type MeasuredOptions } from './measured.js';
export { report, totalRow, categoryOf, CATEGORIES, type Category, type ReportBy, type ReportInput, type ReportRow } from './report.js';
export { formatReport, type ReportFormat } from './format.js';
export { sampleProcess, parseProc, USER_HZ, type ProcessSample } from './proc-sampler.js';
export type { SampleBatch } from './samples.js';
