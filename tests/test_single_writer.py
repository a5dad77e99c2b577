"""Every file the package publishes goes through the one writer, :mod:`clci_keras.fileio`.

A renaming call (``os.replace(``, ``os.rename(``), a hand-made temporary
(``tempfile.mkstemp(``) or a ``.tmp`` name in a string anywhere else in the
package is a second writer: its own temporary names (two writers collide), its
own permissions, its own leftovers on error. So is a ``json.dump(`` into a file
opened elsewhere: JSON files are written by ``fileio.write_json`` (or, for files
published together, from ``fileio.json_text``), in the one format. Comments do not
count; strings, docstrings included, do.
"""
import io
import pathlib
import re
import tokenize

ROOT = pathlib.Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "clci_keras"
WRITER = "clci_keras/fileio.py"

_TMP_NAME = re.compile(r"\.tmp\b")
_STRINGS = {tokenize.STRING} | {getattr(tokenize, "FSTRING_MIDDLE", tokenize.STRING)}
#: Calls that are the writer's business: ``os.replace(``, ``os.rename(``, ``json.dump(``; ``mkstemp(``
#: however imported.
_DOTTED_CALLS = {("os", "replace"), ("os", "rename"), ("json", "dump")}
_CALLS = {"mkstemp"}


def _offences(path):
    """``[(line number, line text, what)]`` of one source file."""
    text = path.read_text(encoding="utf-8")
    lines = text.splitlines()
    toks = [t for t in tokenize.generate_tokens(io.StringIO(text).readline)
            if t.type not in (tokenize.NL, tokenize.NEWLINE, tokenize.COMMENT)]
    found = []
    for i, t in enumerate(toks):
        if t.type in _STRINGS:
            for m in _TMP_NAME.finditer(t.string):
                row = t.start[0] + t.string.count("\n", 0, m.start())
                found.append((row, "a .tmp name"))
        elif t.type == tokenize.NAME and i + 1 < len(toks) and toks[i + 1].string == "(":
            dotted = i >= 2 and toks[i - 1].string == "." and (toks[i - 2].string, t.string) in _DOTTED_CALLS
            if dotted or t.string in _CALLS:
                found.append((t.start[0], f"{toks[i - 2].string + '.' if dotted else ''}{t.string}("))
    return [(row, lines[row - 1].strip(), what) for row, what in sorted(set(found))]


def _all_offences():
    out = []
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(ROOT).as_posix()
        if rel != WRITER:
            out += [(rel, row, line, what) for row, line, what in _offences(path)]
    return out


def test_every_published_file_goes_through_fileio():
    bad = [f"{rel}:{row}: {what}: {line}" for rel, row, line, what in _all_offences()]
    assert not bad, "write these through clci_keras.fileio (atomic_text / atomic_path / atomic_folder / write_json):\n" + "\n".join(bad)


def test_the_check_finds_what_it_looks_for(tmp_path):
    sample = tmp_path / "sample.py"
    sample.write_text(
        'import os, tempfile\n'
        'def f(path):\n'
        '    tmp = f"{path}.tmp{os.getpid()}"  # a .tmp in a comment does not count\n'
        '    fd, t = tempfile.mkstemp(dir=".")\n'
        '    os.replace(tmp, path)\n'
        '    os.rename(tmp, path)\n'
        '    json.dump({}, open(path, "w")); json.dumps({})\n'
        '    """Docstring naming x.tmp-PID."""\n'
        '    self_tmp = path.tmp  # an attribute\n'
        '    return os.path.join(path, "ok")\n', encoding="utf-8")
    assert [(row, what) for row, _, what in _offences(sample)] == [
        (3, "a .tmp name"), (4, "mkstemp("), (5, "os.replace("), (6, "os.rename("), (7, "json.dump("), (8, "a .tmp name")]
