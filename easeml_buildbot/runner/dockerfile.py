"""A Dockerfile parser and the build sandbox's rules for what a model's Dockerfile may do.

The parser follows the Dockerfile reference (and moby/buildkit's parser): parser directives
at the top (``# escape=``, ``# syntax=``), the escape character, line continuations (with
comment and empty lines inside them skipped), comments, case-insensitive instructions, JSON
("exec") form, ``--flags`` and heredocs (``RUN <<EOF``). It does not evaluate the build; it
tells which instruction, on which line, asks for what.

The daemon that builds the model (Docker's classic builder) does not know heredocs: it reads
a heredoc's body as instructions. :func:`sandbox_problems` therefore checks the file read
both ways, so nothing can hide in a body that one reading skips.

>>> df = parse("FROM easeml/busybox AS base\\nCOPY --from=base /bin/sh /sh\\n")
>>> [(i.line, i.keyword) for i in df.instructions]
[(1, 'FROM'), (2, 'COPY')]
>>> [u.ref for u in df.base_images()]
['easeml/busybox']
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field

__all__ = ["Dockerfile", "DockerfileError", "ImageUse", "Instruction", "parse",
           "sandbox_problems", "check_sandbox"]

KEYWORDS = frozenset({
    "ADD", "ARG", "CMD", "COPY", "ENTRYPOINT", "ENV", "EXPOSE", "FROM", "HEALTHCHECK",
    "LABEL", "MAINTAINER", "ONBUILD", "RUN", "SHELL", "STOPSIGNAL", "USER", "VOLUME", "WORKDIR",
})
_HEREDOC_KEYWORDS = frozenset({"RUN", "COPY", "ADD"})
# As moby/buildkit's parser: Go's ``\s`` (ASCII), a name of letters and digits, and only the
# directives the daemon knows (an unknown one is a comment and ends the directives).
_DIRECTIVE = re.compile(r"^#[\t\n\f\r ]*([a-zA-Z][a-zA-Z0-9]*)[\t\n\f\r ]*=[\t\n\f\r ]*(.+?)[\t\n\f\r ]*$")
_CONTROL = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u2028\u2029\udc80-\udcff]")  # + bytes not UTF-8
_KEYWORD_SPLIT = re.compile(r"[\t\v\f\r ]+")
_KNOWN_DIRECTIVES = frozenset({"escape", "syntax"})
# Go's unicode.IsSpace (the daemon trims lines with it); Python's str.strip() also strips
# U+001C..U+001F, which would make a line blank here that the daemon reads as text.
_GO_SPACE = "\t\n\v\f\r \x85\xa0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007\u2008\u2009\u200a\u2028\u2029\u202f\u205f\u3000"
_HEREDOC = re.compile(r"<<(-?)\s*([\"']?)([A-Za-z_][A-Za-z0-9_.-]*)\2")
_VAR = re.compile(r"\$(?:\{([A-Za-z_][A-Za-z0-9_]*)(?::?([-+])([^}]*))?\}|([A-Za-z_][A-Za-z0-9_]*))")
_URL = re.compile(r"^(?:[A-Za-z][A-Za-z0-9+.-]*://|git@)")


class DockerfileError(ValueError):
    """A Dockerfile problem at a line: ``str()`` is ``PATH:LINE: message``."""

    def __init__(self, line: int, message: str, path: str = "Dockerfile") -> None:
        super().__init__(f"{path}:{line}: {message}")
        self.line = line
        self.message = message
        self.path = path
        self.problems: list[DockerfileError] = [self]


@dataclass(frozen=True)
class Heredoc:
    name: str
    body: str
    line: int  # first line of the body


@dataclass(frozen=True)
class Instruction:
    """One instruction. ``args`` is the text after the flags (continuations joined by a
    space, as the daemon does); ``json`` the exec-form list when the text is one."""

    line: int
    end_line: int
    keyword: str
    flags: tuple[tuple[str, str | None], ...]
    args: str
    original: str
    json: tuple[str, ...] | None = None
    heredocs: tuple[Heredoc, ...] = ()

    def flag(self, name: str) -> str | None:
        """The value of ``--name=value`` (last one wins); ``""`` for a bare ``--name``."""
        value = None
        for k, v in self.flags:
            if k == name:
                value = "" if v is None else v
        return value

    def words(self) -> list[str]:
        """The arguments as words: the JSON list, or whitespace-split shell form."""
        if self.json is not None:
            return list(self.json)
        return self.args.split()


@dataclass(frozen=True)
class ImageUse:
    """An image the build pulls or reads: by ``FROM``, ``COPY --from`` or ``RUN --mount from=``."""

    line: int
    ref: str
    how: str


@dataclass(frozen=True)
class Dockerfile:
    instructions: tuple[Instruction, ...]
    directives: Mapping[str, tuple[int, str]] = field(default_factory=dict)
    escape: str = "\\"
    path: str = "Dockerfile"

    def stages(self) -> Iterator[tuple[int, Instruction, str | None]]:
        """(index, FROM instruction, lower-case stage name or None) for every stage."""
        n = 0
        for ins in self.instructions:
            if ins.keyword == "FROM":
                w = ins.words()
                name = w[2].lower() if len(w) >= 3 and w[1].upper() == "AS" else None
                yield n, ins, name
                n += 1

    def meta_args(self) -> dict[str, str | None]:
        """``ARG`` defaults declared before the first ``FROM`` (the only values a ``FROM``
        can expand: no build argument of the repository ever reaches the build)."""
        out: dict[str, str | None] = {}
        for ins in self.instructions:
            if ins.keyword == "FROM":
                break
            if ins.keyword == "ARG":
                for word in ins.words():
                    k, sep, v = word.partition("=")
                    out[k] = _unquote(v) if sep else None
        return out

    def base_images(self, build_args: Mapping[str, str] | None = None) -> list[ImageUse]:
        """Every image reference the build would pull or read, with variables of the
        references expanded from the meta ``ARG`` defaults (overridden by ``build_args``,
        the operator's, for the ARGs declared); stages of this file and
        ``scratch`` are not images. Raises :class:`DockerfileError` for a reference that
        cannot be known without building (a variable without a default)."""
        meta = self.meta_args()
        for k, v in (build_args or {}).items():
            if k in meta:
                meta[k] = v
        seen: list[str] = []
        uses: list[ImageUse] = []
        for ins in self.instructions:
            if ins.keyword == "FROM":
                words = [w for w in ins.words()]
                if not words:
                    raise DockerfileError(ins.line, "FROM needs an image", self.path)
                ref = self._expand(ins, words[0], meta)
                if ref.lower() not in seen and ref.lower() != "scratch":
                    uses.append(ImageUse(ins.line, ref, "FROM"))
                if len(words) >= 3 and words[1].upper() == "AS":
                    seen.append(words[2].lower())
                else:
                    seen.append(f"#{len(seen)}")
            elif ins.keyword in ("COPY", "ADD") and ins.flag("from"):
                src = ins.flag("from") or ""
                # only an earlier stage: the daemon reads the current stage's own name as an
                # image (a local one, or pulled), its index as an error
                if not self._is_stage(src, seen[:-1]):
                    uses.append(ImageUse(ins.line, self._expand(ins, src, {}), "COPY --from"))
            elif ins.keyword == "RUN":
                for value in _all_flags(ins, "mount"):
                    opts = _mount_options(value)
                    src = opts.get("from")
                    if src and not self._is_stage(src, seen[:-1]):
                        uses.append(ImageUse(ins.line, self._expand(ins, src, {}), "RUN --mount from="))
        return uses

    @staticmethod
    def _is_stage(ref: str, seen: list[str]) -> bool:
        return ref.lower() in seen or (ref.isdigit() and int(ref) < len(seen))

    def _expand(self, ins: Instruction, text: str, values: Mapping[str, str | None]) -> str:
        def sub(m: re.Match[str]) -> str:
            name = m.group(1) or m.group(4)
            op, word = m.group(2), m.group(3)
            value = values.get(name)
            if op == "-" and not value:
                return word or ""
            if op == "+":
                return (word or "") if value else ""
            if value is None:
                raise DockerfileError(ins.line, f"{ins.keyword} uses ${name}, which has no "
                                      "default in an ARG before the first FROM (build "
                                      "arguments are not accepted)", self.path)
            return value
        return _VAR.sub(sub, text)


def _unquote(v: str) -> str:
    if len(v) >= 2 and v[0] == v[-1] and v[0] in "\"'":
        return v[1:-1]
    return v


def _all_flags(ins: Instruction, name: str) -> list[str]:
    return ["" if v is None else v for k, v in ins.flags if k == name]


def _mount_options(value: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for part in value.split(","):
        k, sep, v = part.partition("=")
        out[k.strip().lower()] = v.strip() if sep else "true"
    return out


def _split_keyword(line: str) -> tuple[str, str]:
    parts = _KEYWORD_SPLIT.split(line, maxsplit=1)
    return parts[0], (parts[1] if len(parts) > 1 else "")


_FLAG_SPACE = frozenset(b"\t\n\v\f\r \x85\xa0")


def _split_flags(rest: str) -> tuple[list[tuple[str, str | None]], str]:
    """The leading ``--flags`` and the rest, as moby/buildkit's ``extractBuilderFlags``
    reads them. It walks *bytes* and asks Go's ``unicode.IsSpace`` of each byte, so a word
    ends at ``\\v``, ``\\f``, ``\\r`` and at a byte 0x85 or 0xA0, even inside a UTF-8
    character (``Š`` is C5 A0); quotes and backslashes inside a flag word are resolved."""
    raw = rest.encode("utf-8", "surrogateescape")
    flags: list[tuple[str, str | None]] = []
    pos, n = 0, len(raw)

    def text(b: bytes) -> str:
        return b.decode("utf-8", "surrogateescape")
    while True:
        while pos < n and raw[pos] in _FLAG_SPACE:
            pos += 1
        if not raw.startswith(b"--", pos):
            return flags, text(raw[pos:])
        word, quote, started = bytearray(), 0, pos
        while pos < n:
            ch = raw[pos]
            if quote:
                if ch == quote:
                    quote = 0
                elif ch == 0x5C and pos + 1 < n:
                    pos += 1
                    word.append(raw[pos])
                elif ch != 0x5C:
                    word.append(ch)
            elif ch in _FLAG_SPACE:
                break
            elif ch in b"'\"":
                quote = ch
            elif ch == 0x5C:
                if pos + 1 < n:
                    pos += 1
                    word.append(raw[pos])
            else:
                word.append(ch)
            pos += 1
        if raw[started:pos] == b"--":
            return flags, text(raw[pos:]).lstrip(_GO_SPACE)
        # Go appends each byte as a rune (Latin-1): so do we
        name, sep, value = bytes(word[2:]).decode("latin-1").partition("=")
        flags.append((name.lower(), value if sep else None))


def parse(text: str, *, path: str = "Dockerfile", heredocs: bool = True,
          strict: bool = True) -> Dockerfile:
    """Parse a Dockerfile. ``heredocs=False`` reads it as Docker's classic builder does
    (a heredoc's body lines are instructions); ``strict=False`` skips unknown instructions
    instead of raising. Raises :class:`DockerfileError`."""
    # Lines as the daemon reads them: split at LF only, trailing CRs dropped (a CR inside a
    # line stays in it), a UTF-8 byte-order mark dropped from the first line.
    lines = [ln.rstrip("\r\n") for ln in text.split("\n")]
    if lines and lines[0].startswith("\ufeff"):
        lines[0] = lines[0][1:]
    directives: dict[str, tuple[int, str]] = {}
    i = 0
    # Parser directives: only at the very top, before any comment, blank line or instruction.
    while i < len(lines):
        m = _DIRECTIVE.match(lines[i].lstrip(_GO_SPACE))
        if not m or m.group(1).lower() not in _KNOWN_DIRECTIVES:
            break
        if m.group(1).lower() in directives:
            raise DockerfileError(i + 1, f"only one {m.group(1).lower()} parser directive "
                                  "can be used", path)
        directives[m.group(1).lower()] = (i + 1, m.group(2))
        i += 1
    escape = directives.get("escape", (0, "\\"))[1]
    if escape not in ("\\", "`"):
        raise DockerfileError(directives["escape"][0], f"invalid escape character {escape!r} "
                              "(use \\ or `)", path)
    cont = re.compile(re.escape(escape) + r"[ \t]*$")

    out: list[Instruction] = []
    while i < len(lines):
        raw = lines[i]
        start = i + 1
        i += 1
        if not raw.strip(_GO_SPACE) or raw.lstrip(_GO_SPACE).startswith("#"):
            continue
        parts = [raw]
        text_line = raw
        while cont.search(text_line):
            parts[-1] = cont.sub("", parts[-1])
            if i >= len(lines):
                break
            nxt = lines[i]
            i += 1
            if not nxt.strip(_GO_SPACE) or nxt.lstrip(_GO_SPACE).startswith("#"):
                continue  # skipped inside a continuation, as the daemon does
            parts.append(nxt)
            text_line = nxt
        joined = " ".join(p.strip(_GO_SPACE) for p in parts if p.strip(_GO_SPACE))
        # the daemon splits the keyword off at [\t\v\f\r ]+ (moby/buildkit's reWhitespace)
        keyword, rest = _split_keyword(joined)
        keyword = keyword.upper()
        if keyword not in KEYWORDS:
            if not strict:
                continue
            raise DockerfileError(start, f"unknown instruction {keyword!r}", path)
        flags, args = _split_flags(rest) if keyword not in ("ONBUILD",) else ([], rest.strip())
        docs: list[Heredoc] = []
        if heredocs and keyword in _HEREDOC_KEYWORDS:
            for m in _HEREDOC.finditer(args):
                strip_tabs, name = m.group(1) == "-", m.group(3)
                body_start = i + 1
                body: list[str] = []
                while True:
                    if i >= len(lines):
                        raise DockerfileError(start, f"heredoc <<{name} is never closed", path)
                    ln = lines[i]
                    i += 1
                    if (ln.lstrip("\t") if strip_tabs else ln) == name:
                        break
                    body.append(ln.lstrip("\t") if strip_tabs else ln)
                docs.append(Heredoc(name, "\n".join(body), body_start))
        js = None
        if args.startswith("["):
            try:
                value = json.loads(args)
                if isinstance(value, list) and all(isinstance(v, str) for v in value):
                    js = tuple(value)
            except ValueError:
                pass
        out.append(Instruction(line=start, end_line=i, keyword=keyword, flags=tuple(flags),
                               args=args, original=joined, json=js, heredocs=tuple(docs)))
    return Dockerfile(tuple(out), directives, escape, path)


# --------------------------------------------------------------------------- the rules
_ALLOWED_FLAGS = {
    "FROM": {"platform"},
    "COPY": {"chown", "chmod", "from", "link", "parents", "exclude"},
    "ADD": {"chown", "chmod", "link", "exclude"},
    "RUN": {"mount"},
    "HEALTHCHECK": {"interval", "timeout", "start-period", "start-interval", "retries"},
}
_WHY_FLAG = {
    "network": "a RUN step gets the build's network, which the operator chooses "
               "(--network would pick the worker host's)",
    "security": "--security=insecure runs the step with all capabilities",
    "device": "a RUN step gets no device of the worker",
    "checksum": "ADD of a URL is not allowed",
    "keep-git-dir": "ADD of a git repository is not allowed",
}
_WHY_MOUNT = {
    "ssh": "it hands the worker's SSH agent to the build",
    "secret": "it hands a secret of the worker to the build (model repositories declare none)",
    "cache": "a cache mount outlives the build and is shared with builds of other "
             "repositories on this worker",
}


def sandbox_problems(text: str, *, path: str = "Dockerfile") -> list[DockerfileError]:
    """Everything in a model's Dockerfile that would reach outside the build sandbox
    (the worker's network, files, secrets, other builds), each naming its line and why.
    ``FROM`` images are not judged here (see the runner's allowed-image list), but every
    other image pull (``COPY --from=<image>``, ``RUN --mount from=<image>``) is reported
    by :meth:`Dockerfile.base_images` so that the same list governs it."""
    problems: list[DockerfileError] = []
    seen: set[tuple[int, str]] = set()

    def add(line: int, msg: str) -> None:
        if (line, msg) not in seen:
            seen.add((line, msg))
            problems.append(DockerfileError(line, msg, path))

    # Control characters (other than tab, and CR before LF) are where the parser and the
    # daemon have read a file differently (a lone CR, VT, FF, U+001C, U+0085): no model
    # needs them, so none is allowed, whatever the parser makes of them.
    for n, ln in enumerate(text.split("\n"), 1):
        bad = _CONTROL.search(ln.rstrip("\r"))
        if bad:
            c = ord(bad.group())
            what = (f"the byte 0x{c - 0xDC00:02X} (not UTF-8)" if 0xDC80 <= c <= 0xDCFF
                    else f"control character U+{c:04X}")
            add(n, f"{what} is not allowed in a Dockerfile (the daemon and this check could "
                "read the line differently)")
    for heredocs in (True, False):
        try:
            df = parse(text, path=path, heredocs=heredocs, strict=heredocs)
        except DockerfileError as exc:
            add(exc.line, exc.message)
            continue
        for name, (line, value) in df.directives.items():
            if name == "syntax":
                add(line, f"the parser directive '# syntax={value}' is not allowed: it makes "
                    "the daemon pull and run a frontend image")
        for ins in df.instructions:
            _check_instruction(ins, add)
    return sorted(problems, key=lambda e: e.line)


def _check_instruction(ins: Instruction, add) -> None:  # noqa: ANN001 - local callback
    allowed = _ALLOWED_FLAGS.get(ins.keyword, set())
    for name, value in ins.flags:
        if name not in allowed:
            why = _WHY_FLAG.get(name, "the build sandbox allows only "
                                + (", ".join(f"--{f}" for f in sorted(allowed)) or "no flags")
                                + f" on {ins.keyword}")
            shown = f"--{name}" + (f"={value}" if value is not None else "")
            add(ins.line, f"{ins.keyword} {shown} is not allowed: {why}")
    if ins.keyword == "RUN":
        for value in _all_flags(ins, "mount"):
            kind = _mount_options(value).get("type", "bind").lower()
            if kind in _WHY_MOUNT:
                add(ins.line, f"RUN --mount=type={kind} is not allowed: {_WHY_MOUNT[kind]}")
            elif kind not in ("bind", "tmpfs"):
                add(ins.line, f"RUN --mount=type={kind} is not allowed (only bind and tmpfs)")
    if ins.keyword in ("ADD", "COPY"):
        words = ins.words()
        sources = words[:-1] if ins.json is not None or not ins.heredocs else words
        for src in sources:
            if src.startswith("<<"):
                continue
            if _URL.match(src) or "://" in src:
                add(ins.line, f"{ins.keyword} {src} is not allowed: the daemon would fetch it from "
                    "the worker host's network; put the file in the repository")
            elif "$" in src:
                add(ins.line, f"{ins.keyword} source {src!r} uses a variable; sources must be "
                    "literal paths (a variable could name a URL)")
            elif any(c in src for c in "\"'\\`"):
                # the daemon's shell lexer resolves quotes and escapes in sources
                # (ADD h\ttp://... and ADD "http://..." are URLs to it)
                add(ins.line, f"{ins.keyword} source {src!r} has quotes or escape characters; "
                    "sources must be literal paths (the daemon would read them as another path, "
                    "or a URL)")
        if ins.json is None and any("://" in w for w in words[len(sources):]):
            add(ins.line, f"{ins.keyword} {ins.args} is not allowed: it names a URL")
        src = ins.flag("from")
        if src is not None and "$" in src:
            add(ins.line, f"{ins.keyword} --from={src} uses a variable; name a stage or an image")
    if ins.keyword == "VOLUME":
        add(ins.line, "VOLUME is not allowed: a build step's writes under a volume go to a "
            "volume of the worker that the build disk limit does not see (and a model run "
            "would get a writable directory past its output limit)")
    if ins.keyword == "ONBUILD":
        # ONBUILD in the model's own Dockerfile only runs in images built FROM the model:
        # harmless here, but the inner instruction must not be a way out either.
        inner = parse(ins.args, heredocs=False, strict=False).instructions if ins.args else ()
        for sub in inner:
            _check_instruction(Instruction(ins.line, ins.end_line, sub.keyword, sub.flags,
                                           sub.args, sub.original, sub.json), add)


def check_sandbox(text: str, *, path: str = "Dockerfile") -> Dockerfile:
    """Parse and check a model's Dockerfile; raises :class:`DockerfileError` listing every
    problem (one per line of the message) when there is any."""
    problems = sandbox_problems(text, path=path)
    if problems:
        err = DockerfileError(problems[0].line, problems[0].message, path)
        err.args = ("\n".join(str(p) for p in problems),)
        err.problems = problems
        raise err
    return parse(text, path=path)
