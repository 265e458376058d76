"""The collector behind tests/e2e/test_docs_runnable.py, on in-memory Markdown."""

from __future__ import annotations

from pathlib import Path

from tests.e2e.test_docs_runnable import Block, collect_blocks, runnable_blocks

SAMPLE = """\
# Title

```sh
echo plain sh: documentation only
```

```sh runnable
echo one
echo two
```

Text between.

~~~sh runnable
echo tilde fence
~~~

````sh runnable
```text
a nested fence stays inside the block
```
````

```text
sh runnable is only special as an info string
```

```bash runnable
echo not sh: ignored
```

  ```sh   runnable
  echo indented two spaces
  ```
"""


def test_finds_runnable_blocks_with_their_opening_line() -> None:
    blocks = collect_blocks(SAMPLE, "docs/sample.md")
    assert [(b.line, b.code) for b in blocks] == [
        (7, "echo one\necho two\n"),
        (14, "echo tilde fence\n"),
        (18, "```text\na nested fence stays inside the block\n```\n"),
        (32, "echo indented two spaces\n"),
    ]
    assert all(b.path == "docs/sample.md" for b in blocks)
    assert blocks[0].id == "docs/sample.md:7"


def test_ignores_plain_sh_and_other_languages() -> None:
    code = "".join(b.code for b in collect_blocks(SAMPLE, "x.md"))
    assert "plain sh" not in code
    assert "not sh" not in code
    assert "only special" not in code


def test_no_blocks_and_an_unclosed_fence() -> None:
    assert collect_blocks("no fences at all\n", "x.md") == []
    # An unclosed fence runs to the end of the document, as CommonMark says.
    assert collect_blocks("```sh runnable\necho open\n", "x.md") == [Block("x.md", 1, "echo open\n")]


def test_collects_from_readme_and_docs(tmp_path: Path) -> None:
    (tmp_path / "docs").mkdir()
    (tmp_path / "README.md").write_text("```sh runnable\ntrue\n```\n", encoding="utf-8")
    (tmp_path / "docs" / "b.md").write_text("x\n\n```sh runnable\nfalse\n```\n", encoding="utf-8")
    (tmp_path / "docs" / "a.md").write_text("```sh\nnot runnable\n```\n", encoding="utf-8")
    (tmp_path / "other.md").write_text("```sh runnable\nignored: not README or docs/\n```\n", encoding="utf-8")
    assert [b.id for b in runnable_blocks(tmp_path)] == ["README.md:1", "docs/b.md:3"]
