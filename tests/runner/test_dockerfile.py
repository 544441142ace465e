"""The Dockerfile parser (line numbers, continuations, escape, comments, heredocs, JSON form)
and the build sandbox's rules, each refusal naming its line and why."""

from __future__ import annotations

import pytest

from easeml_buildbot.runner.dockerfile import DockerfileError, check_sandbox, parse, sandbox_problems


def test_parser_handles_the_syntax():
    text = (
        "# escape=`\n"
        "\n"
        "# a comment\n"
        "from   easeml/busybox AS Build\n"
        "Run echo a `\n"
        "  # comment inside a continuation\n"
        "\n"
        "  && echo b\n"
        'cmd ["python3", "-c", "print(1)"]\n'
        "COPY --chown=1:1 --from=build /a /b\n"
    )
    df = parse(text)
    assert df.escape == "`"
    assert [(i.line, i.keyword) for i in df.instructions] == [(4, "FROM"), (5, "RUN"), (9, "CMD"), (10, "COPY")]
    assert df.instructions[1].args == "echo a && echo b"
    assert df.instructions[2].json == ("python3", "-c", "print(1)")
    assert df.instructions[3].flag("chown") == "1:1" and df.instructions[3].flag("from") == "build"
    # --from=build names the current stage, which the daemon reads as the image "build"
    assert [u.ref for u in df.base_images()] == ["easeml/busybox", "build"]


def test_heredoc_bodies_are_not_instructions():
    df = parse("FROM x\nRUN <<EOF\nFROM y\nEOF\nCOPY <<-END /f\n\thello\n\tEND\n")
    run, copy = df.instructions[1], df.instructions[2]
    assert run.heredocs[0].body == "FROM y" and run.heredocs[0].line == 3
    assert copy.heredocs[0].body == "hello" and copy.line == 5
    assert [u.ref for u in df.base_images()] == ["x"]
    with pytest.raises(DockerfileError, match=r"Dockerfile:2: heredoc <<EOF is never closed"):
        parse("FROM x\nRUN <<EOF\necho\n")


def test_base_images_expand_meta_args_and_find_every_pull():
    df = parse("ARG PY=3.11\nARG TAG\nFROM python:${PY}-slim AS a\nFROM a\nFROM scratch\n"
               "COPY --from=0 /x /x\nCOPY --from=ghcr.io/acme/tools:1 /t /t\n"
               "RUN --mount=type=bind,from=alpine@sha256:" + "a" * 64 + ",target=/m true\n")
    assert [(u.line, u.ref, u.how) for u in df.base_images()] == [
        (3, "python:3.11-slim", "FROM"), (7, "ghcr.io/acme/tools:1", "COPY --from"),
        (8, "alpine@sha256:" + "a" * 64, "RUN --mount from=")]
    with pytest.raises(DockerfileError, match=r"Dockerfile:2: FROM uses \$TAG, which has no default"):
        parse("ARG TAG\nFROM python:$TAG\n").base_images()


def test_unknown_instruction_names_its_line():
    with pytest.raises(DockerfileError, match=r"Dockerfile:3: unknown instruction 'FORM'"):
        parse("FROM x\n\nFORM y\n")


@pytest.mark.parametrize("text,line,why", [
    ("FROM x\nADD http://127.0.0.1:8000/secret /s\n", 2, "worker host's network"),
    ("FROM x\nadd HTTPS://example.com/a.tgz /a\n", 2, "worker host's network"),
    ("FROM x\nADD git@github.com:acme/private.git /src\n", 2, "worker host's network"),
    ("FROM x\nADD [\"git://h/r\", \"/r\"]\n", 2, "worker host's network"),
    ("FROM x\nCOPY https://h/f /f\n", 2, "worker host's network"),
    ("FROM x\nARG U=http://127.0.0.1/s\nADD $U /s\n", 3, "uses a variable"),
    ("FROM x\nRUN --network=host wget http://127.0.0.1/\n", 2, "--network=host is not allowed"),
    ("FROM x\nRUN \\\n  --network=default true\n", 2, "--network=default is not allowed"),
    ("FROM x\nRUN --mount=type=ssh git clone x\n", 2, "SSH agent"),
    ("FROM x\nRUN --mount=type=secret,id=aws cat /run/secrets/aws\n", 2, "secret of the worker"),
    ("FROM x\nRUN --mount=type=cache,target=/root/.cache pip install x\n", 2, "shared with builds"),
    ("FROM x\nRUN --security=insecure true\n", 2, "all capabilities"),
    ("# syntax=docker/dockerfile:1.4\nFROM x\n", 1, "frontend image"),
    ("# Syntax = evil/frontend\nFROM x\n", 1, "frontend image"),
    ("FROM x\nONBUILD ADD http://h/f /f\n", 2, "worker host's network"),
    # hidden in a heredoc body for a heredoc-aware reader, an instruction for the classic builder
    ("FROM x\nRUN <<EOF\nADD http://127.0.0.1/s /s\nEOF\n", 3, "worker host's network"),
])
def test_sandbox_refuses_ways_out(text, line, why):
    problems = sandbox_problems(text)
    assert problems, "not refused"
    assert any(p.line == line and why in p.message for p in problems), [str(p) for p in problems]
    with pytest.raises(DockerfileError) as err:
        check_sandbox(text)
    assert f"Dockerfile:{line}:" in str(err.value)


@pytest.mark.parametrize("text", [
    "FROM easeml/python:bookworm\nWORKDIR /m\nCOPY --chown=1000 model.py /m/\nADD weights.tar /m/\n"
    'RUN python3 -c "print(1)"\nCMD ["python3", "/m/model.py"]\n',
    "FROM x AS build\nRUN --mount=type=tmpfs,target=/t true\nFROM x\nCOPY --from=build /a /a\n",
    "# escape=`\nFROM x\nRUN echo `\n  ok\n",
    "FROM x\n# ADD http://commented/out /x\nONBUILD RUN echo later\n",
    "FROM x\nRUN echo http://not-a-source.example/ > /url.txt\n",
])
def test_sandbox_accepts_ordinary_dockerfiles(text):
    assert sandbox_problems(text) == []


@pytest.mark.parametrize("text,line", [
    # a lone CR: the daemon splits lines at LF only, so `\` is not at the end of line 2
    ("FROM x\nRUN echo \\\r#\nADD http://127.0.0.1:1/s /s\n", 3),
    # U+001C is blank to str.strip() but text to the daemon (Go's unicode.IsSpace)
    ("FROM x\nRUN echo \\\n\x1c\nADD http://127.0.0.1:1/s /s\n", 4),
    # an unknown directive is a comment to the daemon and ends the directives
    ("# foo=bar\n# escape=`\nFROM x\nRUN true #`\nADD http://127.0.0.1:1/s /s\n", 5),
    # \v, \f, U+00A0 end a flag word for the daemon (Go's unicode.IsSpace), not for split(" ")
    ("FROM x\nADD --chown=0\vhttp://127.0.0.1:1/s /s\n", 2),
    ("FROM x\nADD --chown=0\fhttp://127.0.0.1:1/s /s\n", 2),
    ("FROM x\nADD --chown=0\xa0http://127.0.0.1:1/s /s\n", 2),
    # ... and so does the byte A0 inside a UTF-8 character: the daemon walks flag bytes
    ("FROM x\nADD --chown=a\u0160http://127.0.0.1:1/s /s\n", 2),
])
def test_sandbox_reads_lines_and_directives_as_the_daemon_does(text, line):
    problems = sandbox_problems(text)
    assert any(p.line == line and "ADD http://127.0.0.1:1/s" in p.message for p in problems), \
        [str(p) for p in problems]


@pytest.mark.parametrize("src", [
    "h\\ttp://127.0.0.1:1/s", '"http://127.0.0.1:1/s"', "'http://127.0.0.1:1/s'",
    'h"t"tp://127.0.0.1:1/s', '["h\\\\ttp://127.0.0.1:1/s", "/s"]',
])
def test_sources_the_daemon_unquotes_into_a_url_are_refused(src):
    """Red team: the classic builder's shell lexer resolves quotes and escapes in ADD
    sources; each of these was a URL to it (fetched) and a path to the parser."""
    text = f"FROM x\nADD {src}" + ("" if src.startswith("[") else " /s") + "\n"
    problems = sandbox_problems(text)
    assert any(p.line == 2 for p in problems), [str(p) for p in problems]




def test_parser_drops_bom_and_trailing_crs_as_the_daemon_does():
    df = parse("\ufeff# escape=`\r\nFROM x\r\r\nRUN a `\r\n b\r\n")
    assert df.escape == "`"
    assert [(i.keyword, i.args) for i in df.instructions] == [("FROM", "x"), ("RUN", "a b")]


def test_flags_are_read_as_the_daemon_does():
    ins = parse("FROM x\nCOPY --chown=\"1 2\" --chmod=7\\55 a b\n").instructions[1]
    assert ins.flags == (("chown", "1 2"), ("chmod", "755"))
    assert ins.words() == ["a", "b"]


@pytest.mark.parametrize("ch", ["\r", "\v", "\f", "\x00", "\x1c", "\x85", "\u2028"])
def test_control_characters_are_refused(ch):
    problems = sandbox_problems(f"FROM x\nRUN echo a{ch}b\n")
    assert any(p.line == 2 and "control character" in p.message for p in problems), \
        [str(p) for p in problems]
    assert sandbox_problems("FROM x\r\nRUN\techo a\r\n") == []


def test_copy_from_the_current_stage_name_is_an_image():
    """Red team: `FROM base AS secretimage` + `COPY --from=secretimage` made the daemon read
    the worker's local image `secretimage` (the current stage is not a source yet), while
    base_images() took it for a stage and never checked it against the list."""
    df = parse("FROM easeml/busybox AS priv\nCOPY --from=priv /a /a\nFROM easeml/busybox\n"
               "COPY --from=priv /b /b\nCOPY --from=0 /c /c\n")
    assert [(u.line, u.ref, u.how) for u in df.base_images()] == [
        (1, "easeml/busybox", "FROM"), (2, "priv", "COPY --from"), (3, "easeml/busybox", "FROM")]
