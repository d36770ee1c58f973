/**
 * Shell completion (`carapace completion bash|zsh`). Commander has no completion generator
 * (its maintainers leave it to other packages, such as omelette or tabtab, which would bring
 * their own view of the commands), so the script is written here from the program itself:
 * `completionSpec` walks the commander tree (commands, subcommands, flags, which flags take a
 * value, their choices, file and directory values, which arguments are kinds) and the script
 * holds that data as `case` tables. Commands, flags and kinds complete without starting the
 * CLI (a Tab costs nothing); only object names (`get services <Tab>`) run
 * `carapace get KIND -o name`, bounded by `timeout`. zsh gets the same functions through its
 * bash compatibility layer (bashcompinit), run in ksh emulation so arrays count from 0 and
 * words split as in bash. Pure: a commander tree in, text out.
 */
import type { Command } from 'commander';

/** What completes after a command path (`''` for the top level, `token create`). */
export interface CompletionNode {
  path: string;
  subcommands: string[];
  /** Every flag, short and long, including inherited ones and `-h --help`. */
  flags: string[];
  /** Flags followed by a value (the value is not a positional argument). */
  valued: string[];
  /** What a flag's value completes to: words (its choices), files or directories. */
  values: Record<string, { words: string[] } | 'file' | 'dir'>;
  /** One role per positional argument: a kind, an object name (of the kind before it), fixed words, or nothing. */
  args: ({ words: string[] } | 'kind' | 'name' | 'none')[];
}

/** The completion data of a whole program. */
export interface CompletionSpec {
  program: string;
  nodes: CompletionNode[];
  kinds: string[];
}

const HELP_FLAGS = ['-h', '--help'];

/** Reads the completion data off a commander program; `kinds` are the words a kind argument completes to. */
export function completionSpec(program: Command, kinds: string[]): CompletionSpec {
  const nodes: CompletionNode[] = [];
  const walk = (cmd: Command, path: string, inherited: Pick<CompletionNode, 'flags' | 'valued' | 'values'>): void => {
    const own = flagsOf(cmd);
    // Program options (--server, --token) are accepted after any subcommand too.
    const here = path === '' ? own : { flags: [...own.flags, ...inherited.flags], valued: [...own.valued, ...inherited.valued], values: { ...inherited.values, ...own.values } };
    let sawKind = false;
    const args = cmd.registeredArguments.map((a): CompletionNode['args'][number] => {
      if (a.argChoices) return { words: [...a.argChoices] };
      if (a.name() === 'kind') {
        sawKind = true;
        return 'kind';
      }
      return sawKind && a.name() === 'name' ? 'name' : 'none';
    });
    nodes.push({ path, subcommands: cmd.commands.map((c) => c.name()), flags: [...here.flags, ...HELP_FLAGS], valued: here.valued, values: here.values, args });
    const pass = path === '' ? own : inherited;
    for (const sub of cmd.commands) walk(sub, path === '' ? sub.name() : `${path} ${sub.name()}`, pass);
  };
  walk(program, '', { flags: [], valued: [], values: {} });
  return { program: program.name(), nodes, kinds };
}

function flagsOf(cmd: Command): Pick<CompletionNode, 'flags' | 'valued' | 'values'> {
  const flags: string[] = [];
  const valued: string[] = [];
  const values: CompletionNode['values'] = {};
  for (const o of cmd.options) {
    const names = [o.short, o.long].filter((f): f is string => f !== undefined);
    flags.push(...names);
    if (!o.required && !o.optional) continue;
    valued.push(...names);
    // `<file>`, `<file...>`, `<dir>` in the flag's usage say what its value is.
    const value = o.argChoices ? { words: [...o.argChoices] } : /<file/.test(o.flags) ? 'file' : /<dir/.test(o.flags) ? 'dir' : undefined;
    if (value !== undefined) for (const n of names) values[n] = value;
  }
  return { flags, valued, values };
}

/** A word list as one single-quoted shell word (the words are flags, commands and kinds: no quotes in them). */
function quoted(words: string[]): string {
  return `'${words.join(' ').replace(/'/g, '')}'`;
}

/** The shell functions both scripts share (bash syntax). */
function functions(spec: CompletionSpec): string {
  const fn = `_${spec.program.replace(/[^A-Za-z0-9_]/g, '_')}`;
  const table = (name: string, arms: [string, string][], subject = '"$1"'): string =>
    [`${fn}_${name}() {`, `  case ${subject} in`, ...arms.map(([k, v]) => `    '${k}') echo ${v} ;;`), '  esac', '}'].join('\n');
  const nodes = spec.nodes;
  const valueArms: [string, string][] = [];
  for (const n of nodes) {
    for (const [flag, v] of Object.entries(n.values)) valueArms.push([`${n.path}|${flag}`, v === 'file' || v === 'dir' ? v : quoted(['words', ...v.words])]);
  }
  const argWord = (a: CompletionNode['args'][number]): string => (typeof a === 'string' ? a : `words:${a.words.join(',')}`);
  return `${table('subcommands', nodes.filter((n) => n.subcommands.length > 0).map((n) => [n.path, quoted(n.subcommands)]))}
${table('flags', nodes.map((n) => [n.path, quoted(n.flags)]))}
${table('valued', nodes.filter((n) => n.valued.length > 0).map((n) => [n.path, quoted(n.valued)]))}
${table('value', valueArms, '"$1|$2"')}
${table('args', nodes.filter((n) => n.args.length > 0).map((n) => [n.path, quoted(n.args.map(argWord))]))}
${fn}_kinds=${quoted(spec.kinds)}

# Object names for a kind: the server's \`get KIND -o name\` (kind/[TENANT/]NAME), without the kind.
${fn}_names() {
  local -a run
  command -v timeout >/dev/null 2>&1 && run=(timeout 5)
  "\${run[@]}" "$1" "\${@:3}" get "$2" -o name 2>/dev/null | while IFS= read -r line; do echo "\${line#*/}"; done
}

${fn}() {
  local cur="\${COMP_WORDS[COMP_CWORD]}" path='' npos=0 kind='' skip='' i w
  local -a globals
  COMPREPLY=()
  # Walk the words before the cursor: subcommands extend the path, flags and their values
  # are stepped over (--server and --token are kept for the name lookup), the rest are
  # positional arguments.
  for ((i = 1; i < COMP_CWORD; i++)); do
    w="\${COMP_WORDS[i]}"
    if [[ -n $skip ]]; then
      [[ $skip == -s || $skip == --server || $skip == --token ]] && globals+=("$skip" "$w")
      skip=''
      continue
    fi
    if [[ $w == -* ]]; then
      [[ " $(${fn}_valued "$path") " == *" $w "* ]] && skip="$w"
      continue
    fi
    if ((npos == 0)) && [[ " $(${fn}_subcommands "$path") " == *" $w "* ]]; then
      path="\${path:+$path }$w"
      continue
    fi
    ((npos == 0)) && kind="$w"
    npos=$((npos + 1))
  done
  if [[ -n $skip ]]; then
    # The word under the cursor is the value of the flag before it.
    local value
    value="$(${fn}_value "$path" "$skip")"
    case "$value" in
      words\\ *) COMPREPLY=($(compgen -W "\${value#words }" -- "$cur")) ;;
      file) COMPREPLY=($(compgen -f -- "$cur")) && compopt -o filenames 2>/dev/null ;;
      dir) COMPREPLY=($(compgen -d -- "$cur")) && compopt -o filenames 2>/dev/null ;;
    esac
    return 0
  fi
  if [[ $cur == -* ]]; then
    COMPREPLY=($(compgen -W "$(${fn}_flags "$path")" -- "$cur"))
    return 0
  fi
  local subs
  subs="$(${fn}_subcommands "$path")"
  if ((npos == 0)) && [[ -n $subs ]]; then
    COMPREPLY=($(compgen -W "$subs" -- "$cur"))
    return 0
  fi
  local -a roles
  roles=($(${fn}_args "$path"))
  local role="\${roles[npos]-}"
  case "$role" in
    kind) COMPREPLY=($(compgen -W "$${fn}_kinds" -- "$cur")) ;;
    name) [[ $kind == */* ]] || COMPREPLY=($(compgen -W "$(${fn}_names "\${COMP_WORDS[0]}" "$kind" "\${globals[@]}")" -- "$cur")) ;;
    words:*) role="\${role#words:}" && COMPREPLY=($(compgen -W "\${role//,/ }" -- "$cur")) ;;
  esac
  return 0
}`;
}

/** `carapace completion bash`: load with `source <(carapace completion bash)`. */
export function bashCompletion(spec: CompletionSpec): string {
  const fn = `_${spec.program.replace(/[^A-Za-z0-9_]/g, '_')}`;
  return `# bash completion for ${spec.program}, written by \`${spec.program} completion bash\` from its own
# commands, flags and kinds. Load it with: source <(${spec.program} completion bash)
${functions(spec)}
complete -F ${fn} ${spec.program}
`;
}

/** `carapace completion zsh`: the bash functions through bashcompinit, in ksh emulation. */
export function zshCompletion(spec: CompletionSpec): string {
  const fn = `_${spec.program.replace(/[^A-Za-z0-9_]/g, '_')}`;
  return `#compdef ${spec.program}
# zsh completion for ${spec.program}, written by \`${spec.program} completion zsh\` from its own
# commands, flags and kinds. Load it with: source <(${spec.program} completion zsh)
# It is the bash completion run through zsh's bash compatibility (bashcompinit), in ksh
# emulation so that arrays count from 0 and words split as bash splits them.
autoload -U +X compinit && { (( \${+functions[compdef]} )) || compinit; }
autoload -U +X bashcompinit && bashcompinit
${functions(spec)}
${fn}_zsh() {
  emulate -L ksh
  ${fn} "$@"
}
complete -F ${fn}_zsh ${spec.program}
`;
}
