"""Every figure marked in the docs agrees with its result JSON (weightsep.doc_figures), and the markers'
key paths, formats and messages on small files."""
import json

import pytest

from weightsep import doc_figures
from weightsep.doc_figures import FigureError, draw, formatted, resolve

DATA = {"rows": [{"dnns": 2, "torch.load / gather": 11.57, "pp": -0.4, "rule": "fixed, 2"},
                 {"dnns": 10, "torch.load / gather": 12.29, "pp": 0.2, "rule": "fixed, 2"}],
        "commit": {"sha": "abcdef0123456789", "dirty": False}, "count": 12345}


@pytest.mark.parametrize("doc", doc_figures.docs(), ids=lambda p: str(p.relative_to(doc_figures.REPO_ROOT)))
def test_every_figure_in_the_docs_agrees_with_its_json(doc):
    drawn = draw(doc)
    assert not drawn.broken + drawn.wrong, "\n".join(drawn.broken + drawn.wrong + ["run: python -m weightsep.doc_figures"])


@pytest.mark.parametrize("key, spec, text", [
    ("count", ",d", "12,345"),
    ("rows.1.torch.load / gather", ".1f", "12.3"),   # a key with a dot and spaces
    ("rows.-1.dnns", "", "10"),
    ("rows.dnns=2.pp", "+.2f", "-0.40"),             # the element by a field's value
    ("rows.rule=fixed, 2&dnns=10.torch.load / gather", ".1f", "12.3"),  # by two fields' values
    ("rows.*.torch.load / gather", ".0f", "12"),     # a range that formats to one value
    ("rows.*.torch.load / gather", ".1f", "11.6-12.3"),
    ("rows.*.pp", "+.1f", "-0.4 to +0.2"),
    ("rows.*.torch.load / gather", "+.1f", "+11.6 to +12.3"),
    ("commit.sha", ".7", "abcdef0"),
    ("commit.dirty", "", "False"),
])
def test_key_paths_and_formats(key, spec, text):
    assert formatted(resolve(DATA, key), spec) == text


@pytest.mark.parametrize("key, spec, message", [
    ("rows.2.dnns", "", "no element '2' in a list of 2"),
    ("rows.dnns=3.pp", "", "0 elements with dnns=3"),
    ("rows.rule=fixed, 2.pp", "", "2 elements with rule=fixed, 2, not one"),
    ("rows.0.seeds", "", "no key 'seeds'"),
    ("commit.sha.x", "", "no key 'x'"),
    ("commit.sha", ".2f", "cannot format 'abcdef0123456789' as '.2f'"),
])
def test_a_missing_key_or_a_format_that_does_not_apply_is_named(key, spec, message):
    with pytest.raises(FigureError, match=message):
        formatted(resolve(DATA, key), spec)


def write(root, text):
    (root / "results").mkdir()
    (root / "results" / "r.json").write_text(json.dumps(DATA))
    (root / "README.md").write_text(text)
    return root / "README.md"


def test_the_check_names_file_line_json_and_key_and_the_rewrite_fixes_what_disagrees(tmp_path, capsys):
    doc = write(tmp_path, "# A\n\n"
                "<!-- figure results/r.json:count:,d -->12,000<!-- /figure --> runs, "
                "<!-- figure results/r.json:commit.sha:.7 -->abcdef0<!-- /figure -->\n"
                "<!-- figure results/gone.json:count -->1<!-- /figure --> and "
                "<!-- figure results/r.json:rows.0.seeds -->3<!-- /figure -->\n"
                "```\n<!-- figure results/r.json:count:,d -->an example<!-- /figure -->\n```\n")
    before = doc.read_text()
    assert doc_figures.main(["--check"], root=tmp_path) == 1
    out = capsys.readouterr().out
    assert "README.md:3: results/r.json:count: the doc says '12,000', the JSON '12,345'" in out
    assert "README.md:4: results/gone.json:count: cannot read gone.json" in out
    assert "README.md:4: results/r.json:rows.0.seeds: no key 'seeds'" in out
    assert "commit.sha" not in out and doc.read_text() == before

    assert doc_figures.main([], root=tmp_path) == 1  # redrawn, but two markers are still broken
    assert doc.read_text() == before.replace("-->12,000<", "-->12,345<")
    capsys.readouterr()
    doc.write_text(doc.read_text().split("\n<!-- figure results/gone")[0] + "\n")
    assert doc_figures.main(["--check"], root=tmp_path) == 0 and capsys.readouterr().out == ""
