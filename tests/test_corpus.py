import pytest

from lealla_tf import corpus


def _write(path, lines):
    path.write_bytes(b"".join(lines))
    return str(path)


def test_malformed_lines_are_skipped_counted_and_keep_indices(tmp_path):
    path = _write(tmp_path / "deu-eng.tsv", [
        b"Hallo\tHello\n",            # 0 ok
        b"kaputt \xff\xfe\tbroken\n",  # 1 invalid utf-8
        b"one field only\n",          # 2 wrong fields
        b"a\tb\tc\n",                  # 3 wrong fields
        b"   \tempty source\n",        # 4 empty side
        b"Welt\tWorld\r\n",            # 5 ok (CRLF)
        b"Ende\tEnd",                  # 6 ok, no final newline
    ])
    stats = corpus.Stats()
    rows = list(corpus.iter_tsv(path, stats))
    assert rows == [(0, "Hallo", "Hello"), (5, "Welt", "World"), (6, "Ende", "End")]
    assert stats["ok"] == 3 and stats["invalid_utf8"] == 1
    assert stats["wrong_fields"] == 2 and stats["empty_side"] == 1 and stats.malformed == 4
    assert corpus.count_lines(path) == 7


def test_iter_text_reads_both_sides_of_tsv_and_text_files(tmp_path):
    tsv = _write(tmp_path / "fra-eng.tsv", [b"Bonjour\tHello\n"])
    txt = _write(tmp_path / "notes.txt", [b"one\n", b"\n", b"\xc3\n", b"two\n"])
    assert list(corpus.iter_text(tsv)) == ["Bonjour", "Hello"]
    stats = corpus.Stats()
    assert list(corpus.iter_text(txt, stats)) == ["one", "two"]
    assert stats.malformed == 2


def test_language_codes_and_file_selection(tmp_path):
    for name in ("deu-eng.tsv", "cmn_Hans-eng.tsv", "fra-eng.tsv"):
        (tmp_path / name).write_text("a\tb\n")
    assert corpus.language_of("x/cmn_Hans-eng.tsv") == "cmn_Hans"
    assert corpus.language_of("deu-eng.tsv") == "deu"
    files = corpus.find_files(["*-eng.tsv"], str(tmp_path), languages=["cmn", "deu"])
    assert [corpus.language_of(f) for f in files] == ["cmn_Hans", "deu"]
    assert list(corpus.group_by_language(files)) == ["cmn", "deu"]
    with pytest.raises(FileNotFoundError, match="no files match"):
        corpus.find_files(["zzz-*.tsv"], str(tmp_path))
    with pytest.raises(FileNotFoundError):
        list(corpus.iter_tsv(str(tmp_path / "missing.tsv")))
