"""What may run: the whitelist, the policy file and the job's environment.

This module decides, for one request, *whether* its ``command`` may run and
*what exactly* runs: the program path, the full argv, the environment, the
working directory and the per-command limits.  Everything that can be
checked once is checked at startup by :meth:`Policy.from_options`, which
raises :class:`ConfigError` (a one-line message the CLI turns into a usage
error); :meth:`Policy.resolve` then answers each request with a
:class:`Resolved` or a :class:`PolicyError` carrying the HTTP status.

Three modes, chosen by the options:

* neither ``--whitelist`` nor ``--policy``: any command may run (the seed's
  default), with a startup warning;
* ``--whitelist a,b``: the request's ``command`` must equal an entry; bare
  names are resolved on the daemon's ``PATH`` once, at startup;
* ``--policy FILE``: a TOML file of ``[commands.NAME]`` tables with
  per-command argument rules, limits, environment names and cwd.

Both options together are the union of the two: a policy name runs with its
rules, a whitelist name runs without argument rules; a name in both is a
startup error.  See ``docs/policy.rst`` for the file format.

Nothing here touches the reactor; the file reads and ``PATH`` lookups
happen once, at startup.
"""

from __future__ import annotations

import math
import os
import re
import stat
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

__all__ = [
    "ConfigError",
    "PolicyError",
    "Resolved",
    "CommandRule",
    "Policy",
    "PROGRAM_RUNNERS",
    "DEFAULT_PATH",
    "JOB_ID_ENV",
    "runs_other_programs",
    "default_environment",
]

#: ``PATH`` given to jobs (and used for ``--whitelist`` lookups) when the
#: daemon itself has none, e.g. when started with ``env -i``.
DEFAULT_PATH = "/usr/local/bin:/usr/bin:/bin"

#: Daemon variables every job gets when they are set; ``LC_*`` is a prefix.
DEFAULT_ENV_NAMES = ("PATH", "HOME", "LANG", "TZ", "TMPDIR", "USER", "LOGNAME")
DEFAULT_ENV_PREFIXES = ("LC_",)

#: Set by the runner for every job; no option or request may provide it.
JOB_ID_ENV = "HTTPRUNNER_JOB_ID"

#: Basenames of programs whose job is to run other programs (shells,
#: interpreters, exec wrappers, privilege tools).  Allowing one of them
#: allows, in effect, anything its arguments can name.  Version suffixes
#: count: ``python3.11``, ``bash5``, ``perl5.36``, ``lua5.4``.  Programs that
#: run other programs only through particular flags (``tar
#: --to-command``, ``git --upload-pack``, ``rsync -e``) are guarded by the
#: policy's flag list instead.
PROGRAM_RUNNERS = re.compile(
    r"""
    (?:
        # shells
        sh | ash | dash | bash | rbash | zsh | ksh | mksh | pdksh | yash
        | csh | tcsh | fish | busybox | toybox
        # interpreters
        | python | pypy | perl | ruby | node | nodejs | php | lua | luajit
        | tclsh | wish | expect | awk | gawk | mawk | nawk | guile | osascript
        # programs that exec their arguments
        | env | find | xargs | sudo | doas | su | runuser | pkexec | ssh
        | timeout | nice | ionice | nohup | setsid | stdbuf | chroot | nsenter
        | unshare | chpst | flock | watch | strace | ltrace | time | script
        | parallel | taskset | chrt | setpriv
    )
    (?: [0-9][0-9.]* [a-z]? )?      # version suffix: python3.11, bash5, python3.11m
    """,
    re.VERBOSE,
)

# Request argument / environment names: the usual portable shape.  A name
# with '=' or NUL could never round-trip through execve anyway.
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")

# Request env names that let a request make the program load or run code of
# its choosing; allowing them is legal but earns a startup warning.
_RISKY_ENV = re.compile(
    r"""
    LD_[A-Z_]* | DYLD_[A-Z_]* | BASH_ENV | ENV | BASH_FUNC_.* | SHELLOPTS
    | BASHOPTS | IFS | PS4 | PROMPT_COMMAND | PATH | PYTHON[A-Z_]* | PERL5[A-Z_]*
    | PERLLIB | RUBYOPT | RUBYLIB | NODE_OPTIONS | NODE_PATH | GIT_[A-Z_]*
    | GCONV_PATH | LUA_INIT[A-Z0-9_]* | JAVA_TOOL_OPTIONS | _JAVA_OPTIONS
    """,
    re.VERBOSE,
)

# Keys a [commands.NAME] table may hold; anything else is a ConfigError so
# that a typo ("arg_pattern") cannot silently loosen a rule.
_COMMAND_KEYS = frozenset(
    {
        "path",
        "args",
        "arg_patterns",
        "rest_pattern",
        "flags",
        "min_args",
        "max_args",
        "max_arg_length",
        "timeout",
        "max_timeout",
        "max_running",
        "env",
        "cwd",
    }
)

# How much of a user-supplied string an error message repeats.
_SHOW = 80


class ConfigError(Exception):
    """The options or the policy file are invalid; the daemon must not start.

    The message is one line, naming the option or the file (with the line
    when known) and the problem.
    """


class PolicyError(Exception):
    """A request is refused.

    ``status`` is the HTTP status: 403 when the command or its arguments are
    not allowed, 400 when the request is malformed (an environment name not
    allowed, a NUL in a value).  ``message`` is for the human reading the
    error body.
    """

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass(frozen=True, slots=True)
class Resolved:
    """What the runner spawns for one request."""

    #: What to exec: an absolute path for whitelist and policy entries;
    #: otherwise the request's command verbatim (the runner looks it up).
    program: str
    #: argv[1:]: the policy's fixed arguments, then the request's.
    args: tuple[str, ...]
    #: The job's whole environment, without HTTPRUNNER_JOB_ID.
    env: dict[str, str]
    cwd: str | None
    #: Default timeout in seconds from the policy; None: the server default.
    timeout: float | None
    #: Timeout ceiling from the policy; None: the server ceiling.
    max_timeout: float | None
    #: Concurrent runs allowed for this rule; None: no per-command limit.
    max_running: int | None
    #: Key for per-command concurrency accounting: the command name.
    rule: str


@dataclass(frozen=True, slots=True)
class CommandRule:
    """One allowed command, as configured.  Built at startup only."""

    name: str
    #: Absolute path to exec.
    program: str
    #: Where the rule came from, for messages: "--whitelist" or the file.
    source: str
    #: Whether argument rules apply (policy entries) or not (whitelist).
    restricted: bool = False
    fixed_args: tuple[str, ...] = ()
    arg_patterns: tuple[re.Pattern[str], ...] = ()
    rest_pattern: re.Pattern[str] | None = None
    flags: frozenset[str] = frozenset()
    min_args: int = 0
    max_args: int | None = None
    max_arg_length: int | None = None
    timeout: float | None = None
    max_timeout: float | None = None
    max_running: int | None = None
    env_names: frozenset[str] = frozenset()
    cwd: str | None = None

    def check_args(self, args: list[str]) -> None:
        """Raise PolicyError(403) unless ``args`` pass this rule."""
        if not self.restricted:
            return
        limit = self.max_args
        if self.arg_patterns and self.rest_pattern is None:
            # Positions were spelled out and nothing covers the rest: no
            # arguments beyond the listed positions.
            limit = len(self.arg_patterns) if limit is None else min(limit, len(self.arg_patterns))
        if limit is not None and len(args) > limit:
            raise PolicyError(403, f"{_show(self.name)} takes at most {limit} argument(s), got {len(args)}")
        if len(args) < self.min_args:
            raise PolicyError(403, f"{_show(self.name)} takes at least {self.min_args} argument(s), got {len(args)}")
        for position, arg in enumerate(args, start=1):
            if self.max_arg_length is not None and len(arg.encode("utf-8")) > self.max_arg_length:
                raise PolicyError(
                    403,
                    f"argument {position} of {_show(self.name)} is longer than {self.max_arg_length} bytes",
                )
            if arg.startswith("-") and not self._flag_allowed(arg):
                raise PolicyError(
                    403, f"argument {position} of {_show(self.name)} is a flag that is not allowed: {_show(arg)}"
                )
            pattern = self.arg_patterns[position - 1] if position <= len(self.arg_patterns) else self.rest_pattern
            if pattern is not None and pattern.fullmatch(arg) is None:
                raise PolicyError(403, f"argument {position} of {_show(self.name)} is not allowed: {_show(arg)}")

    def _flag_allowed(self, arg: str) -> bool:
        if arg in self.flags:
            return True
        # "--name=value" is allowed by a listed "--name=" (any value; the
        # position pattern, if any, still applies to the whole argument).
        # A listed "--name" alone does not allow "--name=value".
        equals = arg.find("=")
        return equals > 0 and arg[: equals + 1] in self.flags


def runs_other_programs(program: str) -> bool:
    """Whether ``program`` (a name or a path) is a known program runner."""
    return PROGRAM_RUNNERS.fullmatch(os.path.basename(program)) is not None


def default_environment(environ: Mapping[str, str], pass_env: Iterable[str] = ()) -> dict[str, str]:
    """The environment every job starts from.

    ``PATH``, ``HOME``, ``LANG``, ``LC_*``, ``TZ``, ``TMPDIR``, ``USER`` and
    ``LOGNAME`` are copied from ``environ`` when set, then the ``pass_env``
    names that are set.  Nothing else from ``environ`` is copied.  A daemon
    without ``PATH`` gives its jobs :data:`DEFAULT_PATH`.
    """
    env = {name: environ[name] for name in DEFAULT_ENV_NAMES if name in environ}
    env.update((name, value) for name, value in environ.items() if name.startswith(DEFAULT_ENV_PREFIXES))
    env.update((name, environ[name]) for name in pass_env if name in environ)
    env.setdefault("PATH", DEFAULT_PATH)
    return env


class Policy:
    """The startup decision about what may run, applied to each request."""

    def __init__(
        self,
        rules: Mapping[str, CommandRule] | None,
        base_env: Mapping[str, str],
        allow_env: Iterable[str] = (),
        warnings: Iterable[str] = (),
    ) -> None:
        """``rules`` None means any command may run; use :meth:`from_options`."""
        self._rules = dict(rules) if rules is not None else None
        self._base_env = dict(base_env)
        self._allow_env = frozenset(allow_env)
        self.warnings: list[str] = list(warnings)

    @property
    def unrestricted(self) -> bool:
        """True when any command may run (no whitelist, no policy)."""
        return self._rules is None

    @property
    def command_names(self) -> list[str] | None:
        """The allowed command names, sorted; None when any command may run."""
        return None if self._rules is None else sorted(self._rules)

    def rule(self, name: str) -> CommandRule | None:
        """The configured rule for ``name``, if any."""
        return None if self._rules is None else self._rules.get(name)

    @classmethod
    def from_options(
        cls,
        *,
        whitelist: list[str] | None,
        policy_file: str | None,
        pass_env: list[str],
        allow_env: list[str],
        environ: Mapping[str, str] = os.environ,
        check_files: bool = True,
    ) -> Policy:
        """Validate the options and build the policy, or raise ConfigError.

        ``environ`` is the daemon's environment: its ``PATH`` resolves bare
        whitelist names and it supplies the job's default environment, read
        once, now.  ``check_files=False`` skips checking that programs and
        working directories exist (paths must still be absolute, bare names
        are kept when not found); it exists to validate a policy written for
        another machine, e.g. ``contrib/policy.example.toml`` in the tests.
        """
        warnings: list[str] = []
        for option, names in (("--pass-env", pass_env), ("--allow-env", allow_env)):
            for name in names:
                _check_env_name(name, option)
        for name in pass_env:
            if name not in environ:
                warnings.append(f"--pass-env {name}: not set in the daemon's environment, jobs will not get it")
        search_path = environ.get("PATH") or DEFAULT_PATH

        rules: dict[str, CommandRule] | None = None
        if policy_file is not None:
            rules = _load_policy_file(policy_file, search_path, check_files)
        if whitelist is not None:
            rules = {} if rules is None else rules
            if not whitelist:
                raise ConfigError("--whitelist: no program given")
            for entry in whitelist:
                if entry in rules and rules[entry].source == "--whitelist":
                    continue  # a repeated entry is harmless
                if entry in rules:
                    raise ConfigError(
                        f"--whitelist: {entry!r} is also a command of the policy file "
                        f"{policy_file}; list it in one place only"
                    )
                try:
                    program = _program_path(entry, search_path, check_files)
                except ValueError as e:
                    raise ConfigError(f"--whitelist: {e}") from None
                rules[entry] = CommandRule(name=entry, program=program, source="--whitelist")

        if rules is None:
            warnings.append("no --whitelist or --policy: any command may run, with any arguments, as the daemon's user")
        else:
            warnings.extend(_rule_warnings(rules))
        for name in sorted(allow_env):
            if _RISKY_ENV.fullmatch(name):
                warnings.append(
                    f"--allow-env {name}: a request may set {name}, which can make a program load or run other code"
                )
        return cls(
            rules,
            base_env=default_environment(environ, pass_env),
            allow_env=allow_env,
            warnings=warnings,
        )

    def resolve(self, command: str, args: list[str], env: Mapping[str, str] | None) -> Resolved:
        """Decide whether this request may run and what exactly runs.

        Raises PolicyError: 403 for a command or arguments the policy does
        not allow, 400 for an environment the request may not set or for
        values no process could receive (NUL, lone surrogates).
        """
        if not isinstance(command, str) or not command:
            raise PolicyError(400, "command must be a non-empty string")
        _check_exec_string(command, "command")
        if not isinstance(args, (list, tuple)) or not all(isinstance(a, str) for a in args):
            raise PolicyError(400, "args must be a list of strings")
        for position, arg in enumerate(args, start=1):
            _check_exec_string(arg, f"argument {position}")
        args = list(args)

        if self._rules is None:
            rule = None
        else:
            rule = self._rules.get(command)
            if rule is None:
                raise PolicyError(403, f"command {_show(command)} is not allowed")
            rule.check_args(args)

        job_env = dict(self._base_env)
        if env:
            if not isinstance(env, Mapping):
                raise PolicyError(400, "env must be an object of strings")
            allowed = self._allow_env if rule is None else self._allow_env | rule.env_names
            for name, value in env.items():
                if not isinstance(name, str) or name not in allowed:
                    raise PolicyError(400, f"env: a request may not set {_show(name)} for {_show(command)}")
                if not isinstance(value, str):
                    raise PolicyError(400, f"env: the value of {name} must be a string")
                _check_exec_string(value, f"env {name}")
                job_env[name] = value

        if rule is None:
            return Resolved(
                program=command,
                args=tuple(args),
                env=job_env,
                cwd=None,
                timeout=None,
                max_timeout=None,
                max_running=None,
                rule=command,
            )
        return Resolved(
            program=rule.program,
            args=rule.fixed_args + tuple(args),
            env=job_env,
            cwd=rule.cwd,
            timeout=rule.timeout,
            max_timeout=rule.max_timeout,
            max_running=rule.max_running,
            rule=rule.name,
        )


# --- helpers -----------------------------------------------------------------


def _show(value: object) -> str:
    """A short, quoted, printable rendering of user data for messages."""
    text = repr(value)
    return text if len(text) <= _SHOW else text[: _SHOW - 4] + "...'"


def _check_exec_string(value: str, what: str) -> None:
    # execve takes NUL-terminated bytes: a NUL cannot be passed, and a lone
    # surrogate cannot be encoded.  Refuse both here rather than at spawn.
    if "\0" in value:
        raise PolicyError(400, f"{what} contains a NUL character")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise PolicyError(400, f"{what} is not valid Unicode text") from None


def _check_env_name(name: str, where: str) -> None:
    if not isinstance(name, str) or not _ENV_NAME.fullmatch(name):
        raise ConfigError(f"{where}: {name!r} is not a valid environment variable name")
    if name == JOB_ID_ENV:
        raise ConfigError(f"{where}: {JOB_ID_ENV} is set by httprunner itself")


def _program_path(entry: str, search_path: str, check_files: bool) -> str:
    """An absolute path for ``entry`` (a bare name or an absolute path).

    Raises ValueError with the problem (without saying which option or file
    the entry came from: the caller adds that).
    """
    if not entry or "\0" in entry:
        raise ValueError(f"empty or invalid program name {entry!r}")
    if "/" in entry:
        if not os.path.isabs(entry):
            raise ValueError(f"{entry!r} must be a bare name or an absolute path")
        if check_files:
            problem = _exec_problem(entry)
            if problem:
                raise ValueError(f"{entry} {problem}")
        return os.path.normpath(entry)
    found_unusable = None
    for directory in search_path.split(os.pathsep):
        # Relative PATH entries ("", ".") would make the answer depend on the
        # daemon's cwd; they are skipped.
        if not os.path.isabs(directory):
            continue
        candidate = os.path.join(directory, entry)
        if not os.path.lexists(candidate):
            continue
        problem = _exec_problem(candidate)
        if problem is None:
            return candidate
        found_unusable = found_unusable or f"{candidate} {problem}"
    if not check_files:
        return entry
    if found_unusable:
        raise ValueError(f"program {entry!r} is not usable: {found_unusable}")
    raise ValueError(f"program {entry!r} not found on PATH ({search_path})")


def _exec_problem(path: str) -> str | None:
    """Why ``path`` cannot be executed, or None when it can."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return "does not exist"
    except OSError as e:
        return f"cannot be checked: {e.strerror}"
    if not stat.S_ISREG(st.st_mode):
        return "is not a regular file"
    if not os.access(path, os.X_OK):
        return "is not executable"
    return None


def _rule_warnings(rules: Mapping[str, CommandRule]) -> list[str]:
    warnings = []
    for name in sorted(rules):
        rule = rules[name]
        candidates = {name, rule.program, os.path.realpath(rule.program)}
        if any(runs_other_programs(c) for c in candidates):
            shown = repr(name) if name == rule.program else f"{name!r} ({rule.program})"
            if rule.restricted:
                warnings.append(
                    f"{shown} can run other programs: make sure the argument rules "
                    f"in {rule.source} do not let a request choose them"
                )
            else:
                warnings.append(
                    f"{shown} can run other programs, and {rule.source} puts no rule on "
                    "its arguments: a request can run anything through it"
                )
    # A whitelist entry for a program the policy restricts under another name
    # bypasses those rules; say so.
    restricted_programs: dict[str, list[str]] = {}
    for rule in rules.values():
        if rule.restricted:
            restricted_programs.setdefault(os.path.realpath(rule.program), []).append(rule.name)
    for name in sorted(rules):
        rule = rules[name]
        others = restricted_programs.get(os.path.realpath(rule.program))
        if not rule.restricted and others:
            warnings.append(
                f"{name!r} from --whitelist runs {rule.program} without the argument rules "
                f"of policy command(s) {', '.join(sorted(others))}"
            )
    return warnings


# --- the policy file ---------------------------------------------------------


class _Lines:
    """Best-effort map from TOML key paths to the line that defines them.

    tomllib reports positions only for syntax errors; for a semantic problem
    (an unknown key, a bad regular expression) this finds the line of the
    table header or key so that the message can still say where to look.
    Each header and ``key =`` line is parsed with tomllib itself, so quoted
    and dotted keys come out right; lines inside multi-line strings may
    confuse it, in which case the message names a nearby line or none.
    """

    _HEADER = re.compile(r"\s*\[[^\[].*\]\s*(#.*)?$")
    _KEY = re.compile(
        r"""\s*((?:[A-Za-z0-9_-]+|"[^"\n]*"|'[^'\n]*')(?:\s*\.\s*(?:[A-Za-z0-9_-]+|"[^"\n]*"|'[^'\n]*'))*)\s*="""
    )

    def __init__(self, text: str) -> None:
        self._lines: dict[tuple[str, ...], int] = {}
        table: tuple[str, ...] = ()
        for number, line in enumerate(text.splitlines(), start=1):
            if self._HEADER.match(line):
                keys = self._keys(line.strip())
                if keys is not None:
                    table = keys
                    self._record(table, number)
                continue
            match = self._KEY.match(line)
            if match:
                keys = self._keys(f"{match.group(1)} = 0")
                if keys is not None:
                    self._record(table + keys, number)

    @staticmethod
    def _keys(snippet: str) -> tuple[str, ...] | None:
        try:
            data: Any = tomllib.loads(snippet)
        except tomllib.TOMLDecodeError:
            return None
        keys = []
        while isinstance(data, dict) and len(data) == 1:
            ((key, data),) = data.items()
            keys.append(key)
        return tuple(keys) if keys else None

    def _record(self, keys: tuple[str, ...], number: int) -> None:
        for end in range(1, len(keys) + 1):
            self._lines.setdefault(keys[:end], number)

    def find(self, *keys: str) -> int | None:
        """The line of the longest known prefix of ``keys``."""
        for end in range(len(keys), 0, -1):
            if keys[:end] in self._lines:
                return self._lines[keys[:end]]
        return None


class _FileContext:
    """Builds ConfigErrors that name the file, the line and the key."""

    def __init__(self, path: str, text: str) -> None:
        self.path = path
        self.lines = _Lines(text)

    def error(self, problem: str, *keys: str) -> ConfigError:
        line = self.lines.find(*keys) if keys else None
        where = self.path if line is None else f"{self.path}:{line}"
        return ConfigError(f"policy file {where}: {problem}")


def _load_policy_file(path: str, search_path: str, check_files: bool) -> dict[str, CommandRule]:
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except OSError as e:
        raise ConfigError(f"policy file {path}: cannot read it: {e.strerror or e}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        raise ConfigError(f"policy file {path}:{line}: not valid UTF-8") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        # The message ends in "(at line L, column C)"; put the line up front
        # as well, in the usual file:line form.
        found = re.search(r"at line (\d+)", str(e))
        where = f"{path}:{found.group(1)}" if found else path
        raise ConfigError(f"policy file {where}: invalid TOML: {e}") from None

    ctx = _FileContext(path, text)
    unknown = sorted(set(data) - {"commands"})
    if unknown:
        raise ctx.error(f"unknown top-level key {unknown[0]!r} (expected only [commands.NAME] tables)", unknown[0])
    commands = data.get("commands")
    if not isinstance(commands, dict) or not commands:
        raise ctx.error("defines no command: add a [commands.NAME] table", "commands")
    rules = {}
    for name, table in commands.items():
        rules[name] = _parse_command(ctx, name, table, search_path, check_files)
    return rules


def _parse_command(ctx: _FileContext, name: str, table: object, search_path: str, check_files: bool) -> CommandRule:
    where = f"[commands.{_toml_key(name)}]"

    def fail(problem: str, *key: str) -> ConfigError:
        return ctx.error(f"{where} {problem}", "commands", name, *key)

    if not name or "\0" in name:
        raise fail("command name must be non-empty text without NUL")
    if not isinstance(table, dict):
        raise fail("must be a table of settings")
    unknown = sorted(set(table) - _COMMAND_KEYS)
    if unknown:
        raise fail(f"unknown key {unknown[0]!r} (known: {', '.join(sorted(_COMMAND_KEYS))})", unknown[0])

    def string(key: str) -> str | None:
        value = table.get(key)
        if value is None:
            return None
        if not isinstance(value, str) or not value or "\0" in value:
            raise fail(f"{key}: expected a non-empty string, got {value!r}", key)
        return value

    def strings(key: str) -> list[str]:
        value = table.get(key, [])
        if not isinstance(value, list) or not all(isinstance(v, str) and "\0" not in v for v in value):
            raise fail(f"{key}: expected a list of strings", key)
        return value

    def integer(key: str, minimum: int) -> int | None:
        value = table.get(key)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise fail(f"{key}: expected an integer >= {minimum}, got {value!r}", key)
        return value

    def seconds(key: str) -> float | None:
        value = table.get(key)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
            raise fail(f"{key}: expected a number of seconds > 0, got {value!r}", key)
        return float(value)

    def regex(key: str, source: object, label: str) -> re.Pattern[str]:
        if not isinstance(source, str) or "\0" in source:
            raise fail(f"{label}: expected a regular expression string, got {source!r}", key)
        try:
            return re.compile(source)
        except re.error as e:
            raise fail(f"{label}: bad regular expression {source!r}: {e}", key) from None

    path = string("path")
    if path is not None and not os.path.isabs(path):
        raise fail(f"path: must be absolute, got {path!r}", "path")
    try:
        program = _program_path(path or name, search_path, check_files)
    except ValueError as e:
        raise fail(f"path: {e}" if path else str(e), "path") from None

    patterns = tuple(
        regex("arg_patterns", source, f"arg_patterns[{index}]")
        for index, source in enumerate(strings("arg_patterns"), start=1)
    )
    rest_source = table.get("rest_pattern")
    rest = regex("rest_pattern", rest_source, "rest_pattern") if rest_source is not None else None

    flags = strings("flags")
    for flag in flags:
        if not flag.startswith("-"):
            raise fail(f"flags: {flag!r} does not begin with '-'", "flags")

    min_args = integer("min_args", 0) or 0
    max_args = integer("max_args", 0)
    limit = max_args
    if patterns and rest is None:
        limit = len(patterns) if limit is None else min(limit, len(patterns))
    if limit is not None and min_args > limit:
        raise fail(f"min_args: {min_args} is more than the {limit} argument(s) allowed", "min_args")

    timeout = seconds("timeout")
    max_timeout = seconds("max_timeout")
    if timeout is not None and max_timeout is not None and timeout > max_timeout:
        raise fail(f"timeout: {timeout:g} is above max_timeout {max_timeout:g}", "timeout")

    env_names = strings("env")
    for env_name in env_names:
        try:
            _check_env_name(env_name, "env")
        except ConfigError as e:
            raise fail(str(e), "env") from None

    cwd = string("cwd")
    if cwd is not None:
        if not os.path.isabs(cwd):
            raise fail(f"cwd: must be absolute, got {cwd!r}", "cwd")
        if check_files and not os.path.isdir(cwd):
            raise fail(f"cwd: {cwd} is not an existing directory", "cwd")

    return CommandRule(
        name=name,
        program=program,
        source=f"policy file {ctx.path}",
        restricted=True,
        fixed_args=tuple(strings("args")),
        arg_patterns=patterns,
        rest_pattern=rest,
        flags=frozenset(flags),
        min_args=min_args,
        max_args=max_args,
        max_arg_length=integer("max_arg_length", 1),
        timeout=timeout,
        max_timeout=max_timeout,
        max_running=integer("max_running", 1),
        env_names=frozenset(env_names),
        cwd=cwd,
    )


def _toml_key(name: str) -> str:
    return name if re.fullmatch(r"[A-Za-z0-9_-]+", name) else '"' + name.replace('"', '\\"') + '"'
