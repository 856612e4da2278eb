"""Tests for httprunner.policy: whitelist, policy file, job environment."""

from __future__ import annotations

import os
import re
import textwrap
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from httprunner.policy import (
    DEFAULT_PATH,
    PROGRAM_RUNNERS,
    ConfigError,
    Policy,
    PolicyError,
    Resolved,
    default_environment,
    runs_other_programs,
)

EXAMPLE = Path(__file__).resolve().parent.parent / "contrib" / "policy.example.toml"


# --- helpers -------------------------------------------------------------------


def make_exe(directory: Path, name: str, mode: int = 0o755) -> Path:
    """A tiny real program: the policy checks files on disk."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / name
    path.write_text("#!/bin/sh\nexit 0\n")
    path.chmod(mode)
    return path


@pytest.fixture
def bindir(tmp_path: Path) -> Path:
    d = tmp_path / "bin"
    for name in ("tool", "other", "bash", "python3.11"):
        make_exe(d, name)
    return d


@pytest.fixture
def environ(bindir: Path) -> dict[str, str]:
    return {"PATH": str(bindir), "HOME": "/home/runner", "AWS_SECRET_ACCESS_KEY": "s3cr3t"}


def policy_file(tmp_path: Path, text: str) -> str:
    path = tmp_path / "policy.toml"
    path.write_text(textwrap.dedent(text))
    return str(path)


def build(
    *,
    environ: dict[str, str],
    whitelist: list[str] | None = None,
    policy: str | None = None,
    pass_env: list[str] | None = None,
    allow_env: list[str] | None = None,
    check_files: bool = True,
) -> Policy:
    return Policy.from_options(
        whitelist=whitelist,
        policy_file=policy,
        pass_env=pass_env or [],
        allow_env=allow_env or [],
        environ=environ,
        check_files=check_files,
    )


def refused(policy: Policy, command: str, args: list[str], env: dict[str, str] | None = None) -> PolicyError:
    with pytest.raises(PolicyError) as info:
        policy.resolve(command, args, env or {})
    return info.value


# --- the job environment -------------------------------------------------------


@pytest.mark.parametrize(
    "environ, pass_env, expected",
    [
        pytest.param(
            {
                "PATH": "/p",
                "HOME": "/h",
                "LANG": "C.UTF-8",
                "TZ": "UTC",
                "TMPDIR": "/t",
                "USER": "u",
                "LOGNAME": "u",
                "LC_ALL": "C",
                "LC_TIME": "de_DE",
            },
            [],
            {
                "PATH": "/p",
                "HOME": "/h",
                "LANG": "C.UTF-8",
                "TZ": "UTC",
                "TMPDIR": "/t",
                "USER": "u",
                "LOGNAME": "u",
                "LC_ALL": "C",
                "LC_TIME": "de_DE",
            },
            id="all-defaults-copied",
        ),
        pytest.param(
            {"PATH": "/p", "AWS_SECRET_ACCESS_KEY": "s3cr3t", "DATABASE_URL": "pg://x", "SHELL": "/bin/sh"},
            [],
            {"PATH": "/p"},
            id="nothing-else-copied",
        ),
        pytest.param({"HOME": "/h"}, [], {"HOME": "/h", "PATH": DEFAULT_PATH}, id="no-path-gets-default"),
        pytest.param({"PATH": ""}, [], {"PATH": ""}, id="empty-path-kept-as-set"),
        pytest.param(
            {"PATH": "/p", "PGHOST": "db", "SECRET": "x"},
            ["PGHOST"],
            {"PATH": "/p", "PGHOST": "db"},
            id="pass-env-added",
        ),
        pytest.param({"PATH": "/p"}, ["PGHOST"], {"PATH": "/p"}, id="pass-env-unset-skipped"),
        pytest.param({"LCX": "no", "XLC_ALL": "no"}, [], {"PATH": DEFAULT_PATH}, id="lc-is-a-prefix"),
    ],
)
def test_default_environment(environ, pass_env, expected):
    assert default_environment(environ, pass_env) == expected


def test_secret_in_daemon_environment_never_reaches_a_job(environ):
    environ = {**environ, "LC_ALL": "C.UTF-8", "GITHUB_TOKEN": "ghp_x"}
    for policy in (build(environ=environ), build(environ=environ, whitelist=["tool"])):
        resolved = policy.resolve("tool", [], {})
        assert "AWS_SECRET_ACCESS_KEY" not in resolved.env
        assert "GITHUB_TOKEN" not in resolved.env
        assert "s3cr3t" not in resolved.env.values()
        assert resolved.env["LC_ALL"] == "C.UTF-8"
        assert resolved.env["HOME"] == "/home/runner"
        assert "HTTPRUNNER_JOB_ID" not in resolved.env


def test_pass_env_adds_daemon_variables(environ):
    policy = build(environ={**environ, "PGHOST": "db"}, pass_env=["PGHOST", "AWS_SECRET_ACCESS_KEY"])
    env = policy.resolve("tool", [], {}).env
    assert env["PGHOST"] == "db"
    assert env["AWS_SECRET_ACCESS_KEY"] == "s3cr3t"  # named explicitly by the operator


def test_pass_env_unset_is_a_warning(environ):
    policy = build(environ=environ, pass_env=["NOT_SET_ANYWHERE"])
    assert any("--pass-env NOT_SET_ANYWHERE" in w for w in policy.warnings)


def test_environment_is_read_once_at_startup(environ):
    policy = build(environ=environ)
    environ["HOME"] = "/changed"
    environ["LC_ALL"] = "C"
    env = policy.resolve("tool", [], {}).env
    assert env["HOME"] == "/home/runner"
    assert "LC_ALL" not in env


def test_each_resolution_gets_its_own_environment(environ):
    # The runner adds HTTPRUNNER_JOB_ID to the dict; that must not leak into
    # the next job.
    policy = build(environ=environ)
    first = policy.resolve("tool", [], {})
    first.env["HTTPRUNNER_JOB_ID"] = "a" * 40
    first.env["PATH"] = "/mutated"
    second = policy.resolve("tool", [], {})
    assert "HTTPRUNNER_JOB_ID" not in second.env
    assert second.env["PATH"] == environ["PATH"]


# --- request env -----------------------------------------------------------------


def test_request_env_names_need_allow_env(environ):
    policy = build(environ=environ)
    error = refused(policy, "tool", [], {"FOO": "1"})
    assert error.status == 400
    assert "FOO" in error.message


@pytest.mark.parametrize("whitelist", [None, ["tool"]])
def test_allow_env_lets_a_request_set_a_name(environ, whitelist):
    policy = build(environ=environ, whitelist=whitelist, allow_env=["FOO", "HOME"])
    env = policy.resolve("tool", [], {"FOO": "bar", "HOME": "/tmp/h"}).env
    assert env["FOO"] == "bar"
    assert env["HOME"] == "/tmp/h"  # an allowed name overrides the default
    assert refused(policy, "tool", [], {"BAR": "x"}).status == 400


def test_policy_env_names_apply_to_their_command_only(tmp_path, environ, bindir):
    path = policy_file(
        tmp_path,
        f"""
        [commands.a]
        path = "{bindir / "tool"}"
        env = ["DEPLOY_BY"]
        [commands.b]
        path = "{bindir / "other"}"
        """,
    )
    policy = build(environ=environ, policy=path, allow_env=["GLOBAL"])
    assert policy.resolve("a", [], {"DEPLOY_BY": "ci", "GLOBAL": "1"}).env["DEPLOY_BY"] == "ci"
    # --allow-env applies to policy commands too.
    assert policy.resolve("b", [], {"GLOBAL": "1"}).env["GLOBAL"] == "1"
    assert refused(policy, "b", [], {"DEPLOY_BY": "ci"}).status == 400


@pytest.mark.parametrize(
    "env",
    [
        pytest.param({"FOO": "a\0b"}, id="nul-in-value"),
        pytest.param({"FOO": "\ud800"}, id="lone-surrogate"),
        pytest.param({"FOO": 1}, id="not-a-string"),
        pytest.param({"FOO": None}, id="null"),
        pytest.param({"FOO=BAR": "x"}, id="name-with-equals"),
        pytest.param({"": "x"}, id="empty-name"),
        pytest.param({"HTTPRUNNER_JOB_ID": "x"}, id="job-id"),
    ],
)
def test_bad_request_env_is_400(environ, env):
    policy = build(environ=environ, allow_env=["FOO"])
    assert refused(policy, "tool", [], env).status == 400


@pytest.mark.parametrize(
    "option, name, problem",
    [
        ("allow_env", "A=B", "not a valid environment variable name"),
        ("allow_env", "", "not a valid environment variable name"),
        ("pass_env", "1ABC", "not a valid environment variable name"),
        ("allow_env", "HTTPRUNNER_JOB_ID", "set by httprunner itself"),
        ("pass_env", "HTTPRUNNER_JOB_ID", "set by httprunner itself"),
    ],
)
def test_bad_env_option_is_config_error(environ, option, name, problem):
    with pytest.raises(ConfigError, match=re.escape(problem)) as info:
        options: dict[str, Any] = {option: [name]}
        build(environ=environ, **options)
    assert ("--pass-env" if option == "pass_env" else "--allow-env") in str(info.value)


def test_risky_allow_env_is_a_warning(environ):
    policy = build(environ=environ, whitelist=["tool"], allow_env=["LD_PRELOAD", "FOO"])
    assert any("LD_PRELOAD" in w for w in policy.warnings)
    assert not any("FOO" in w for w in policy.warnings)


# --- no whitelist, no policy -------------------------------------------------------


def test_without_whitelist_any_command_runs_verbatim(environ):
    policy = build(environ=environ)
    assert policy.unrestricted
    assert policy.command_names is None
    resolved = policy.resolve("some-program", ["-rf", "a b", "--x=y"], {})
    assert resolved == Resolved(
        program="some-program",
        args=("-rf", "a b", "--x=y"),
        env={"PATH": environ["PATH"], "HOME": "/home/runner"},
        cwd=None,
        timeout=None,
        max_timeout=None,
        max_running=None,
        rule="some-program",
    )


def test_without_whitelist_the_startup_warning_says_so(environ):
    policy = build(environ=environ)
    assert any("any command may run" in w for w in policy.warnings)
    assert not any("any command may run" in w for w in build(environ=environ, whitelist=["tool"]).warnings)


@pytest.mark.parametrize(
    "command, args, status",
    [
        ("", [], 400),
        ("to\0ol", [], 400),
        ("tool", ["a\0b"], 400),
        ("tool", ["\udfff"], 400),
        ("\ud800", [], 400),
    ],
)
def test_strings_no_process_can_receive_are_400(environ, command, args, status):
    for policy in (build(environ=environ), build(environ=environ, whitelist=["tool"])):
        assert refused(policy, command, args).status == status


# --- whitelist ----------------------------------------------------------------------


def test_whitelist_bare_name_resolves_on_path_at_startup(environ, bindir):
    policy = build(environ=environ, whitelist=["tool"])
    resolved = policy.resolve("tool", ["--anything", "goes"], {})
    assert resolved.program == str(bindir / "tool")
    assert resolved.args == ("--anything", "goes")  # no argument rules
    assert resolved.rule == "tool"
    assert policy.command_names == ["tool"]


@pytest.mark.parametrize("command", ["other", "Tool", "tool ", str(Path("bin") / "tool"), "/usr/bin/tool"])
def test_whitelist_needs_an_exact_match(environ, command):
    policy = build(environ=environ, whitelist=["tool"])
    error = refused(policy, command, [])
    assert error.status == 403
    assert "not allowed" in error.message


def test_whitelist_absolute_path_entry(environ, bindir):
    entry = str(bindir / "tool")
    policy = build(environ=environ, whitelist=[entry])
    assert policy.resolve(entry, [], {}).program == entry
    assert refused(policy, "tool", []).status == 403


def test_whitelist_skips_non_executable_earlier_on_path(tmp_path, bindir):
    first = tmp_path / "first"
    make_exe(first, "tool", mode=0o644)
    policy = build(environ={"PATH": f"{first}:{bindir}"}, whitelist=["tool"])
    assert policy.resolve("tool", [], {}).program == str(bindir / "tool")


def test_whitelist_ignores_relative_path_entries(tmp_path, monkeypatch):
    make_exe(tmp_path, "localtool")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match="not found on PATH"):
        build(environ={"PATH": ".:bin:"}, whitelist=["localtool"])


def test_whitelist_uses_default_path_when_daemon_has_none():
    policy = build(environ={}, whitelist=["sh"])
    assert policy.resolve("sh", [], {}).program in {"/usr/local/bin/sh", "/usr/bin/sh", "/bin/sh"}


@pytest.mark.parametrize(
    "entry, problem",
    [
        ("missing-program", "'missing-program' not found on PATH"),
        ("noexec", "is not executable"),
        ("relative/tool", "must be a bare name or an absolute path"),
        ("/nonexistent/tool", "/nonexistent/tool does not exist"),
        ("", "empty or invalid program name"),
    ],
)
def test_whitelist_bad_entry_is_config_error(environ, bindir, entry, problem):
    make_exe(bindir, "noexec", mode=0o644)
    with pytest.raises(ConfigError, match=re.escape(problem)) as info:
        build(environ=environ, whitelist=["tool", entry])
    assert str(info.value).startswith("--whitelist: ")
    assert "\n" not in str(info.value)


def test_whitelist_directory_is_config_error(environ, tmp_path):
    with pytest.raises(ConfigError, match="is not a regular file"):
        build(environ=environ, whitelist=[str(tmp_path)])


def test_empty_whitelist_is_config_error(environ):
    with pytest.raises(ConfigError, match="--whitelist"):
        build(environ=environ, whitelist=[])


def test_repeated_whitelist_entry_is_harmless(environ):
    assert build(environ=environ, whitelist=["tool", "tool"]).command_names == ["tool"]


# --- program runners -----------------------------------------------------------------


@pytest.mark.parametrize(
    "program",
    [
        "sh",
        "bash",
        "bash5",
        "dash",
        "zsh",
        "env",
        "python",
        "python3",
        "python3.11",
        "pypy3",
        "perl",
        "perl5.36",
        "find",
        "xargs",
        "sudo",
        "ssh",
        "timeout",
        "nice",
        "busybox",
        "/usr/bin/env",
        "/usr/local/bin/python3.12",
    ],
)
def test_program_runners_detected(program):
    assert runs_other_programs(program)


@pytest.mark.parametrize(
    "program",
    [
        "ls",
        "shasum",
        "envsubst",
        "findmnt",
        "nicely",
        "pythonista",
        "tar",
        "ffmpeg",
        "bash-completion",
        "/usr/bin/sshd-keygen-x",
        "ssh-keygen",
        "true",
    ],
)
def test_ordinary_programs_not_flagged(program):
    assert not runs_other_programs(program)
    assert PROGRAM_RUNNERS.fullmatch(os.path.basename(program)) is None


def test_whitelisted_program_runner_is_warned_by_name(environ):
    policy = build(environ=environ, whitelist=["tool", "bash", "python3.11"])
    runners = [w for w in policy.warnings if "can run other programs" in w]
    assert len(runners) == 2
    assert any("'bash'" in w for w in runners)
    assert any("'python3.11'" in w for w in runners)
    assert not any("'tool'" in w for w in policy.warnings)


def test_program_runner_behind_another_name_is_warned(environ, bindir):
    (bindir / "innocent").symlink_to(bindir / "bash")
    policy = build(environ=environ, whitelist=["innocent"])
    assert any("'innocent'" in w and "can run other programs" in w for w in policy.warnings)


def test_policy_program_runner_is_warned(tmp_path, environ, bindir):
    path = policy_file(
        tmp_path,
        f"""
        [commands.deploy]
        path = "{bindir / "bash"}"
        args = ["/opt/deploy.sh"]
        max_args = 0
        """,
    )
    policy = build(environ=environ, policy=path)
    assert [w for w in policy.warnings if "'deploy'" in w and "can run other programs" in w]


# --- the policy file: rules ---------------------------------------------------------


@pytest.mark.parametrize(
    "rules, args, allowed",
    [
        # no argument rules at all: any operand, but no flags
        ("", ["a", "b c", ""], True),
        ("", ["-x"], False),
        ("", ["-"], False),
        ("", ["--"], False),
        # a regular expression per position, full match
        ("arg_patterns = ['[a-z]+', '[0-9]+']", ["abc", "42"], True),
        ("arg_patterns = ['[a-z]+', '[0-9]+']", ["abc"], True),
        ("arg_patterns = ['[a-z]+', '[0-9]+']", ["abc1", "42"], False),
        ("arg_patterns = ['[a-z]+', '[0-9]+']", ["xabc\n", "42"], False),
        ("arg_patterns = ['[a-z]+', '[0-9]+']", ["abc", "4a"], False),
        ("arg_patterns = ['[a-z]+']", ["abc", "extra"], False),
        ("arg_patterns = ['a|b']", ["ab"], False),  # alternation is anchored as a whole
        # rest_pattern covers the positions after arg_patterns
        ("arg_patterns = ['[a-z]+']\nrest_pattern = '[0-9]+'", ["abc", "1", "2", "3"], True),
        ("arg_patterns = ['[a-z]+']\nrest_pattern = '[0-9]+'", ["abc", "1", "x"], False),
        ("rest_pattern = '[0-9]+'", ["1", "2"], True),
        ("rest_pattern = '[0-9]+'", ["1", "a"], False),
        # flags must be listed, exactly
        ("flags = ['-v', '--verbose']", ["-v", "x", "--verbose"], True),
        ("flags = ['-v']", ["-vv"], False),
        ("flags = ['-v', '-x']", ["-vx"], False),  # bundles must be listed as sent
        ("flags = ['-v']", ["--verbose"], False),
        ("flags = ['-']", ["-"], True),
        ("flags = ['--format=']", ["--format=gnu"], True),
        ("flags = ['--format=']", ["--format"], False),
        ("flags = ['--format']", ["--format=gnu"], False),
        ("flags = ['--format=gnu']", ["--format=gnu"], True),
        ("flags = ['--format=gnu']", ["--format=posix"], False),
        ("flags = ['--ref=']", ["--upload-pack=touch /tmp/x"], False),
        ("flags = ['-c']", ["-c", "core.sshCommand=evil"], True),  # operands are free without patterns
        # flags and patterns both apply
        ("flags = ['-v']\narg_patterns = ['.*']", ["-x"], False),
        ("flags = ['-v']\narg_patterns = ['[a-z]+']", ["-v"], False),
        ("flags = ['-v']\narg_patterns = ['-v|[a-z]+']", ["-v"], True),
        ("flags = ['--ref=']\nrest_pattern = '--ref=[0-9a-f]{7}'", ["--ref=abcdef0"], True),
        ("flags = ['--ref=']\nrest_pattern = '--ref=[0-9a-f]{7}'", ["--ref=main"], False),
        # counts and lengths
        ("max_args = 2", ["a", "b"], True),
        ("max_args = 2", ["a", "b", "c"], False),
        ("max_args = 0", [], True),
        ("max_args = 0", ["a"], False),
        ("min_args = 1", [], False),
        ("min_args = 1", ["a"], True),
        ("arg_patterns = ['.*', '.*']\nmax_args = 1", ["a", "b"], False),
        ("rest_pattern = '.*'\nmax_args = 3", ["a", "b", "c", "d"], False),
        ("max_arg_length = 5", ["abcde"], True),
        ("max_arg_length = 5", ["abcdef"], False),
        ("max_arg_length = 5", ["\u00e9\u00e9\u00e9"], False),  # 6 bytes in UTF-8
    ],
)
def test_policy_argument_rules(tmp_path, environ, bindir, rules, args, allowed):
    path = policy_file(tmp_path, f'[commands.tool]\npath = "{bindir / "tool"}"\n{rules}\n')
    policy = build(environ=environ, policy=path)
    if allowed:
        assert policy.resolve("tool", args, {}).args == tuple(args)
    else:
        error = refused(policy, "tool", args)
        assert error.status == 403
        assert "'tool'" in error.message


def test_policy_fixed_args_come_first_and_are_not_checked(tmp_path, environ, bindir):
    path = policy_file(
        tmp_path,
        f"""
        [commands.archive]
        path = "{bindir / "tool"}"
        args = ["--create", "--file"]
        arg_patterns = ['/srv/[a-z]+\\.tar']
        """,
    )
    policy = build(environ=environ, policy=path)
    resolved = policy.resolve("archive", ["/srv/x.tar"], {})
    assert resolved.program == str(bindir / "tool")
    assert resolved.args == ("--create", "--file", "/srv/x.tar")
    # The pattern covers the first *request* argument, not the fixed ones.
    assert refused(policy, "archive", ["--create"]).status == 403


def test_policy_settings_reach_the_resolution(tmp_path, environ, bindir):
    path = policy_file(
        tmp_path,
        f"""
        [commands."slow job"]
        path = "{bindir / "tool"}"
        timeout = 60
        max_timeout = 90.5
        max_running = 2
        cwd = "{tmp_path}"
        """,
    )
    resolved = build(environ=environ, policy=path).resolve("slow job", [], {})
    assert (resolved.timeout, resolved.max_timeout, resolved.max_running) == (60.0, 90.5, 2)
    assert resolved.cwd == str(tmp_path)
    assert resolved.rule == "slow job"


def test_policy_without_settings_leaves_server_defaults(tmp_path, environ, bindir):
    path = policy_file(tmp_path, f'[commands.tool]\npath = "{bindir / "tool"}"\n')
    resolved = build(environ=environ, policy=path).resolve("tool", [], {})
    assert (resolved.timeout, resolved.max_timeout, resolved.max_running, resolved.cwd) == (None, None, None, None)


def test_policy_command_without_path_is_looked_up_on_path(tmp_path, environ, bindir):
    path = policy_file(tmp_path, "[commands.other]\nmax_args = 1\n")
    policy = build(environ=environ, policy=path)
    assert policy.resolve("other", ["x"], {}).program == str(bindir / "other")


def test_policy_refuses_unknown_commands(tmp_path, environ, bindir):
    path = policy_file(tmp_path, f'[commands.tool]\npath = "{bindir / "tool"}"\n')
    policy = build(environ=environ, policy=path)
    assert refused(policy, "other", []).status == 403
    assert refused(policy, str(bindir / "tool"), []).status == 403
    assert not any("any command may run" in w for w in policy.warnings)


# --- the policy file: errors ------------------------------------------------------------


@pytest.mark.parametrize(
    "text, line, problem",
    [
        ("[commands.a]\npath = \n", 2, "invalid TOML"),
        ("[commands.a]\npath = '/bin/true'\n[commands.a]\n", 3, "invalid TOML"),
        ("# comment\n[commands.a]\npath = '/bin/true'\narg_pattern = ['x']\n", 4, "unknown key 'arg_pattern'"),
        (
            "[commands.a]\npath = '/bin/true'\narg_patterns = ['ok', 'x(']\n",
            3,
            "arg_patterns[2]: bad regular expression 'x('",
        ),
        ("[commands.a]\npath = '/bin/true'\narg_patterns = [\n  'ok',\n  '[z-a]',\n]\n", 3, "bad regular expression"),
        ("[commands.a]\npath = '/bin/true'\n\nrest_pattern = '(?P<'\n", 4, "rest_pattern: bad regular expression"),
        ("[commands.a]\npath = '/bin/true'\narg_patterns = [1]\n", 3, "arg_patterns: expected a list of strings"),
        ("[commands.a]\npath = '/bin/true'\nargs = 'x'\n", 3, "args: expected a list of strings"),
        ("version = 1\n[commands.a]\npath = '/bin/true'\n", 1, "unknown top-level key 'version'"),
        ("[commands.a]\npath = 'bin/true'\n", 2, "path: must be absolute"),
        ("[commands.a]\npath = '/nonexistent/prog'\n", 2, "/nonexistent/prog does not exist"),
        ("[commands.missing-prog]\nmax_args = 1\n", 1, "'missing-prog' not found on PATH"),
        ("[commands.a]\npath = '/bin/true'\ntimeout = -1\n", 3, "timeout: expected a number of seconds > 0"),
        ("[commands.a]\npath = '/bin/true'\ntimeout = 0\n", 3, "timeout: expected a number of seconds > 0"),
        ("[commands.a]\npath = '/bin/true'\ntimeout = nan\n", 3, "timeout: expected a number of seconds > 0"),
        ("[commands.a]\npath = '/bin/true'\ntimeout = true\n", 3, "timeout: expected a number of seconds > 0"),
        ("[commands.a]\npath = '/bin/true'\nmax_timeout = '1h'\n", 3, "max_timeout: expected a number"),
        ("[commands.a]\npath = '/bin/true'\ntimeout = 10\nmax_timeout = 5\n", 3, "timeout: 10 is above max_timeout 5"),
        ("[commands.a]\npath = '/bin/true'\nmax_running = 0\n", 3, "max_running: expected an integer >= 1"),
        ("[commands.a]\npath = '/bin/true'\nmax_args = -1\n", 3, "max_args: expected an integer >= 0"),
        ("[commands.a]\npath = '/bin/true'\nmax_args = 1.5\n", 3, "max_args: expected an integer >= 0"),
        ("[commands.a]\npath = '/bin/true'\nmax_arg_length = 0\n", 3, "max_arg_length: expected an integer >= 1"),
        ("[commands.a]\npath = '/bin/true'\nmin_args = 3\nmax_args = 2\n", 3, "min_args: 3 is more than the 2"),
        ("[commands.a]\npath = '/bin/true'\narg_patterns = ['x']\nmin_args = 2\n", 4, "min_args: 2 is more than the 1"),
        ("[commands.a]\npath = '/bin/true'\nflags = ['v']\n", 3, "flags: 'v' does not begin with '-'"),
        ("[commands.a]\npath = '/bin/true'\nenv = ['A=B']\n", 3, "not a valid environment variable name"),
        ("[commands.a]\npath = '/bin/true'\nenv = ['HTTPRUNNER_JOB_ID']\n", 3, "set by httprunner itself"),
        ("[commands.a]\npath = '/bin/true'\ncwd = 'srv'\n", 3, "cwd: must be absolute"),
        (
            "[commands.a]\npath = '/bin/true'\ncwd = '/nonexistent/dir'\n",
            3,
            "cwd: /nonexistent/dir is not an existing directory",
        ),
        ("[commands]\na = 1\n", 2, "[commands.a] must be a table"),
        ("[commands]\n", 1, "defines no command"),
        ("# nothing\n", None, "defines no command"),
        ('[commands."my tool"]\npath = "/bin/true"\n  bogus = 1\n', 3, "[commands.\"my tool\"] unknown key 'bogus'"),
        ("[commands]\nls = { path = '/bin/true', bogus = 1 }\n", 2, "unknown key 'bogus'"),
        (
            "[commands.a]\npath = '/bin/true'\n[commands.b]\npath = '/bin/true'\ntimeout = 'x'\n",
            5,
            "[commands.b] timeout",
        ),
    ],
)
def test_policy_file_errors_name_file_line_and_problem(tmp_path, environ, text, line, problem):
    path = policy_file(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        build(environ={**environ, "PATH": "/usr/bin:/bin"}, policy=path)
    message = str(info.value)
    assert "\n" not in message
    where = f"{path}:{line}:" if line is not None else f"{path}:"
    assert where in message
    assert problem in message


def test_policy_file_not_executable_is_config_error(tmp_path, environ, bindir):
    noexec = make_exe(bindir, "noexec", mode=0o644)
    path = policy_file(tmp_path, f'[commands.a]\npath = "{noexec}"\n')
    with pytest.raises(ConfigError, match="is not executable"):
        build(environ=environ, policy=path)


def test_missing_policy_file_is_config_error(tmp_path, environ):
    missing = tmp_path / "nope.toml"
    with pytest.raises(ConfigError, match=re.escape(f"policy file {missing}: cannot read it")):
        build(environ=environ, policy=str(missing))


def test_policy_file_not_utf8_is_config_error(tmp_path, environ):
    path = tmp_path / "policy.toml"
    path.write_bytes(b"# ok\n# \xff\xfe\n")
    with pytest.raises(ConfigError, match=re.escape(f"{path}:2: not valid UTF-8")):
        build(environ=environ, policy=str(path))


# --- whitelist and policy together ----------------------------------------------------


def test_whitelist_and_policy_are_a_union(tmp_path, environ, bindir):
    path = policy_file(tmp_path, f'[commands.strict]\npath = "{bindir / "tool"}"\nmax_args = 0\n')
    policy = build(environ=environ, policy=path, whitelist=["other"])
    assert policy.command_names == ["other", "strict"]
    assert refused(policy, "strict", ["x"]).status == 403
    # The whitelist name runs without argument rules.
    assert policy.resolve("other", ["-x", "y"], {}).args == ("-x", "y")
    assert refused(policy, "tool", []).status == 403


def test_name_in_both_whitelist_and_policy_is_config_error(tmp_path, environ, bindir):
    path = policy_file(tmp_path, f'[commands.tool]\npath = "{bindir / "tool"}"\n')
    with pytest.raises(ConfigError, match="'tool' is also a command of the policy file"):
        build(environ=environ, policy=path, whitelist=["tool"])


def test_whitelist_bypassing_a_policy_rule_is_warned(tmp_path, environ, bindir):
    path = policy_file(tmp_path, f'[commands.strict]\npath = "{bindir / "tool"}"\nmax_args = 0\n')
    policy = build(environ=environ, policy=path, whitelist=["tool"])
    assert any("'tool' from --whitelist" in w and "strict" in w for w in policy.warnings)


# --- the example policy ---------------------------------------------------------------


@pytest.fixture
def example() -> Policy:
    # The example names programs under /usr/bin, /opt and /srv that this
    # machine need not have: check_files=False validates everything else.
    return build(environ={"PATH": "/usr/bin:/bin"}, policy=str(EXAMPLE), check_files=False)


def test_example_policy_parses(example):
    assert example.command_names == ["archive", "deploy", "disk-usage", "transcode"]
    assert example.warnings == []


def test_example_policy_check_files_is_what_skips_missing_programs():
    if all(os.path.exists(p) for p in ("/usr/bin/ffmpeg", "/opt/deploy/bin/deploy-site", "/opt/deploy")):
        pytest.skip("this machine has every program of the example")
    with pytest.raises(ConfigError):
        build(environ={"PATH": "/usr/bin:/bin"}, policy=str(EXAMPLE))


def test_example_policy_requests_from_its_comments(example):
    transcode = example.resolve(
        "transcode", ["-i", "/srv/media/incoming/talk.mov", "-crf", "23", "/srv/media/out/talk.mp4"], {}
    )
    assert transcode.program == "/usr/bin/ffmpeg"
    assert transcode.args[:5] == ("-nostdin", "-hide_banner", "-loglevel", "error", "-y")
    assert (transcode.timeout, transcode.max_timeout, transcode.max_running) == (3600.0, 14400.0, 2)

    archive = example.resolve("archive", ["/srv/archives/2026-11-27.tar.gz", "website", "api"], {})
    assert archive.args[-3:] == ("/srv/archives/2026-11-27.tar.gz", "website", "api")

    deploy = example.resolve("deploy", ["staging", "--ref=4f2a9c1"], {"DEPLOY_REQUESTED_BY": "ci"})
    assert deploy.args == ("--non-interactive", "staging", "--ref=4f2a9c1")
    assert deploy.env["DEPLOY_REQUESTED_BY"] == "ci"
    assert deploy.cwd == "/opt/deploy"

    assert example.resolve("disk-usage", [], {}).args == ("--human-readable", "/srv")


@pytest.mark.parametrize(
    "command, args",
    [
        ("transcode", ["-i", "/etc/shadow", "-crf", "23", "/srv/media/out/x.mp4"]),
        ("transcode", ["-i", "/srv/media/incoming/../../../etc/x.mov", "-crf", "23", "/srv/media/out/x.mp4"]),
        ("transcode", ["-i", "/srv/media/incoming/a.mov", "-crf", "23", "/srv/media/out/x.mp4", "-f"]),
        ("transcode", ["-i", "/srv/media/incoming/a.mov", "-crf", "51", "/srv/media/out/x.mp4"]),
        ("archive", ["/srv/archives/x.tar.gz", "--to-command=sh"]),
        ("archive", ["/srv/archives/x.tar.gz", ".."]),
        ("archive", ["/srv/archives/x.tar.gz"]),
        ("deploy", ["staging", "--upload-pack=touch /tmp/pwned"]),
        ("deploy", ["qa"]),
        ("deploy", ["production", "--ref=main"]),
        ("disk-usage", ["/etc"]),
    ],
)
def test_example_policy_refuses(example, command, args):
    assert refused(example, command, args).status == 403


# --- property: resolve never fails in an unexpected way -------------------------------


@pytest.fixture(scope="module")
def policies(tmp_path_factory) -> list[Policy]:
    tmp = tmp_path_factory.mktemp("prop")
    bindir = tmp / "bin"
    make_exe(bindir, "tool")
    make_exe(bindir, "other")
    environ = {"PATH": str(bindir), "LC_ALL": "C"}
    path = tmp / "policy.toml"
    path.write_text(
        f"""
        [commands.tool]
        path = "{bindir / "tool"}"
        args = ["--fixed"]
        arg_patterns = ['[a-z]+', '[0-9]{{1,3}}']
        rest_pattern = '-v|x.*'
        flags = ["-v", "--ref="]
        min_args = 1
        max_args = 5
        max_arg_length = 20
        env = ["FOO"]
        """.replace("\n        ", "\n")
    )
    return [
        Policy.from_options(whitelist=None, policy_file=None, pass_env=[], allow_env=["FOO"], environ=environ),
        Policy.from_options(whitelist=["tool"], policy_file=None, pass_env=[], allow_env=["FOO"], environ=environ),
        Policy.from_options(whitelist=["other"], policy_file=str(path), pass_env=[], allow_env=[], environ=environ),
    ]


_words = st.one_of(
    st.text(max_size=30),
    st.sampled_from(["tool", "other", "abc", "12", "-v", "--ref=x", "-", "--", "x-y", "FOO", "LC_ALL"]),
)


@settings(max_examples=300, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    which=st.integers(0, 2),
    command=_words,
    args=st.lists(_words, max_size=7),
    env=st.dictionaries(_words, _words, max_size=3),
)
def test_resolve_returns_or_refuses_never_crashes(policies, which, command, args, env):
    policy = policies[which]
    try:
        resolved = policy.resolve(command, args, env)
    except PolicyError as error:
        assert error.status in (400, 403)
        assert isinstance(error.message, str) and error.message
        return
    assert isinstance(resolved, Resolved)
    assert resolved.args[-len(args) :] == tuple(args) if args else True
    assert all("\0" not in a for a in resolved.args)
    assert set(env) <= set(resolved.env)
    assert "HTTPRUNNER_JOB_ID" not in resolved.env
    assert resolved.rule == command
