// Shell completion: the script is generated from a commander program shaped like the CLI's
// (subcommands, flags with values and choices, file flags, KIND NAME arguments) and run by the
// real bash with simulated COMP_WORDS, as bash runs it on Tab. The real program's script is
// exercised through the built binary in test/e2e/cli-habits.test.ts.
import { execFile } from 'node:child_process';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { Argument, Command, Option } from 'commander';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { bashCompletion, completionSpec, zshCompletion } from './completion.js';

const run = promisify(execFile);
const KINDS = ['tenants', 'services', 'volumesnapshots'];

function program(): Command {
  const p = new Command().name('carapace').option('-s, --server <url>').option('--token <token>');
  p.command('get')
    .argument('<kind>')
    .argument('[name]')
    .option('-t, --tenant <tenant>')
    .addOption(new Option('-o, --output <format>').choices(['table', 'name']))
    .option('-w, --watch');
  p.command('delete').argument('[kind]').argument('[name]').option('-f, --filename <file...>');
  p.command('up').option('--state-dir <dir>');
  p.command('completion').addArgument(new Argument('<shell>').choices(['bash', 'zsh']));
  const token = p.command('token');
  token.command('create').option('--name <name>');
  token.command('list');
  return p;
}

let dir: string;
let script: string;

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'carapace-completion-'));
  script = join(dir, 'carapace.bash');
  await writeFile(script, bashCompletion(completionSpec(program(), KINDS)));
  await writeFile(join(dir, 'state.db'), '');
});

afterAll(async () => {
  await rm(dir, { recursive: true, force: true });
});

/** What bash offers for `words` with the cursor in the last one. */
async function offers(...words: string[]): Promise<string[]> {
  const arr = words.map((w) => `'${w}'`).join(' ');
  const { stdout } = await run('bash', ['-c', `cd '${dir}' && source '${script}' && COMP_WORDS=(${arr}) && COMP_CWORD=${words.length - 1} && _carapace && printf '%s\\n' "\${COMPREPLY[@]}"`]);
  return stdout.split('\n').filter((l) => l !== '').sort();
}

describe('bash completion', () => {
  it('registers itself for the command', async () => {
    const { stdout } = await run('bash', ['-c', `source '${script}' && complete -p carapace`]);
    expect(stdout.trim()).toBe('complete -F _carapace carapace');
  });

  it('completes commands, subcommands and kinds', async () => {
    expect(await offers('carapace', '')).toEqual(['completion', 'delete', 'get', 'token', 'up']);
    expect(await offers('carapace', 'g')).toEqual(['get']);
    expect(await offers('carapace', 'get', '')).toEqual([...KINDS].sort());
    expect(await offers('carapace', 'get', 'se')).toEqual(['services']);
    expect(await offers('carapace', 'delete', 'v')).toEqual(['volumesnapshots']);
    expect(await offers('carapace', 'token', '')).toEqual(['create', 'list']);
    expect(await offers('carapace', 'completion', '')).toEqual(['bash', 'zsh']);
    // Flags and their values are stepped over: the kind is still the first argument.
    expect(await offers('carapace', '--server', 'http://x', 'get', '-o', 'name', '-w', 't')).toEqual(['tenants']);
  });

  it("completes flags (the command's and the program's), choices and files", async () => {
    expect(await offers('carapace', 'get', '--')).toEqual(['--help', '--output', '--server', '--tenant', '--token', '--watch']);
    expect(await offers('carapace', 'get', 'services', '-o', '')).toEqual(['name', 'table']);
    expect(await offers('carapace', 'token', 'create', '--n')).toEqual(['--name']);
    expect(await offers('carapace', 'delete', '-f', 'sta')).toEqual(['state.db']);
    expect(await offers('carapace', 'up', '--state-dir', 'sta')).toEqual([]); // a directory only; state.db is a file
    expect(await offers('carapace', 'get', '-t', '')).toEqual([]); // a free value: nothing to offer
  });
});

describe('zsh completion', () => {
  it('is the same functions, registered through bashcompinit in ksh emulation', () => {
    const z = zshCompletion(completionSpec(program(), KINDS));
    expect(z.startsWith('#compdef carapace\n')).toBe(true);
    expect(z).toContain('bashcompinit');
    expect(z).toMatch(/_carapace_zsh\(\) \{\n {2}emulate -L ksh\n {2}_carapace "\$@"\n\}\ncomplete -F _carapace_zsh carapace\n$/);
    expect(z).toContain(bashCompletion(completionSpec(program(), KINDS)).split('\n').slice(2, -2).join('\n'));
  });
});
