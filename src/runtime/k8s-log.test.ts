import { describe, expect, it } from 'vitest';
import { K8sLogParser, parseK8sLog } from './k8s-log.js';

describe('k8s-file log parsing', () => {
  it('parses full lines of both streams, keeping spaces in the text', () => {
    const text = '2026-01-01T00:00:00.1+00:00 stdout F hello  world\n2026-01-01T00:00:00.2+00:00 stderr F oops\n';
    expect(parseK8sLog(text)).toEqual([
      { time: '2026-01-01T00:00:00.1+00:00', stream: 'stdout', text: 'hello  world' },
      { time: '2026-01-01T00:00:00.2+00:00', stream: 'stderr', text: 'oops' },
    ]);
  });

  it('joins partial records per stream, with the time of the first part', () => {
    const text = ['t1 stdout P ab', 't2 stderr F err', 't3 stdout P cd', 't4 stdout F ef', 't5 stdout F '].join('\n');
    expect(parseK8sLog(text)).toEqual([
      { time: 't2', stream: 'stderr', text: 'err' },
      { time: 't1', stream: 'stdout', text: 'abcdef' },
      { time: 't5', stream: 'stdout', text: '' },
    ]);
  });

  it('flushes a trailing partial and skips malformed lines', () => {
    const p = new K8sLogParser();
    expect(p.push('garbage')).toBeUndefined();
    expect(p.push('t1 stdin F x')).toBeUndefined();
    expect(p.push('t1 stdout P tail')).toBeUndefined();
    expect(p.flush()).toEqual([{ time: 't1', stream: 'stdout', text: 'tail' }]);
    expect(p.flush()).toEqual([]);
  });
});
