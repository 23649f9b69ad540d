"""The pure core's checks on untrusted input: no server needed."""

from __future__ import annotations

from typing import Any

import pytest

from function.errors import (
    BuildContextError,
    ContextTooLarge,
    InvalidRequest,
    InvalidSource,
    UnsupportedRuntime,
)
from function.settings import Settings
from function.validation import parse, validate

SETTINGS = Settings()


def check(data: dict[str, Any], settings: Settings = SETTINGS) -> Any:
    return validate(parse(data), settings)


def failure(data: dict[str, Any], settings: Settings = SETTINGS) -> BuildContextError:
    with pytest.raises(BuildContextError) as caught:
        check(data, settings)
    return caught.value


def base(**extra: Any) -> dict[str, Any]:
    return {"lambdaFunction": "fix", "sourceCode": "print(1)\n", **extra}


@pytest.mark.parametrize("name", ["", "A", "a_b", "-a", "a-", "a" * 64, "a.b", "ä"])
def test_function_names_follow_kubernetes_rules(name: str) -> None:
    error = failure(base(lambdaFunction=name))
    assert isinstance(error, InvalidRequest)
    assert error.errors[0].field == "lambdaFunction"


def test_a_63_character_name_is_fine() -> None:
    assert check(base(lambdaFunction="a" * 63)).function == "a" * 63


@pytest.mark.parametrize(
    ("alias", "runtime"),
    [
        ("python3", "python"),
        ("PY", "python"),
        ("node", "nodejs"),
        ("golang", "go"),
        ("js", "nodejs"),
    ],
)
def test_runtime_aliases(alias: str, runtime: str) -> None:
    source = {"python": "1", "nodejs": "1;", "go": "package main\nfunc main() {}\n"}[runtime]
    assert check(base(runtime=alias, sourceCode=source)).runtime.name == runtime


def test_unsupported_version_lists_the_allowed_ones() -> None:
    error = failure(base(runtimeVersion="3.6"))
    assert isinstance(error, UnsupportedRuntime)
    assert "3.11" in error.message and "3.13" in error.message


@pytest.mark.parametrize(
    ("spec", "words"),
    [
        ("-e git+https://x/y", "pip option"),
        ("-r other.txt", "pip option"),
        ("--extra-index-url https://x", "pip option"),
        ("pkg @ https://example.com/pkg.whl", "URL"),
        ("git+https://github.com/x/y", "PEP 508"),
        ("requests>=2;\nos", "one line"),
    ],
)
def test_python_dependencies_refuse_options_urls_and_vcs(spec: str, words: str) -> None:
    error = failure(base(dependencies=[spec]))
    assert isinstance(error, InvalidRequest)
    assert error.errors[0].field == "dependencies[0]"
    assert words in error.errors[0].message


def test_urls_are_allowed_when_configured() -> None:
    settings = Settings(allow_url_dependencies=True)
    valid = check(base(dependencies=["pkg @ https://example.com/pkg.whl"]), settings)
    assert valid.dependencies == (("pkg", "pkg @ https://example.com/pkg.whl"),)


def test_duplicate_python_requirements_are_refused() -> None:
    error = failure(base(dependencies=["Requests>=2", "requests<3"]))
    assert "listed twice" in error.errors[0].message


@pytest.mark.parametrize(
    "deps",
    [
        {"Express": "^4"},
        {"_x": "1"},
        {"ok": "git+https://github.com/a/b"},
        {"ok": "file:../x"},
        {"ok": "latest"},
    ],
)
def test_npm_names_and_ranges(deps: dict[str, str]) -> None:
    (name,) = deps
    error = failure(base(runtime="nodejs", sourceCode="1;", dependencies=deps))
    assert error.errors[0].field == f"dependencies.{name}"


def test_npm_scoped_names_and_ranges_are_fine() -> None:
    valid = check(
        base(
            runtime="nodejs", sourceCode="1;", dependencies={"@org/pkg": "~1.2.0", "ms": "^2 || ^3"}
        )
    )
    assert valid.dependencies == (("@org/pkg", "~1.2.0"), ("ms", "^2 || ^3"))


@pytest.mark.parametrize(
    "spec",
    [
        "github.com/x/y",
        "github.com/x/y@latest",
        "localhost/x@v1.0.0",
        "github.com/x/../y@v1.0.0",
        "Github.com/x@v1.0.0",
    ],
)
def test_go_modules_need_a_path_and_a_semantic_version(spec: str) -> None:
    error = failure(
        base(runtime="go", sourceCode="package main\nfunc main() {}\n", dependencies=[spec])
    )
    assert error.errors[0].field == "dependencies[0]"


def test_go_pseudo_versions_and_major_suffixes_are_fine() -> None:
    valid = check(
        base(
            runtime="go",
            sourceCode="package main\nfunc main() {}\n",
            dependencies=[
                "golang.org/x/sys@v0.0.0-20240101000000-abcdefabcdef",
                "github.com/a/b/v2@v2.1.0",
            ],
        )
    )
    assert len(valid.dependencies) == 2


def test_go_entry_must_be_package_main() -> None:
    error = failure(base(runtime="go", sourceCode="package lib\n\nfunc Fix() {}\n"))
    assert isinstance(error, InvalidSource)
    assert "package main" in error.message


@pytest.mark.parametrize(
    ("path", "words"),
    [
        ("/etc/passwd", "absolute"),
        ("../x.py", "normalised"),
        ("a/../../x.py", "normalised"),
        ("a//b.py", "normalised"),
        ("a\\b.py", "backslash"),
        ("a\tb.py", "control"),
        (".env", "part"),
        ("x" * 101, "longer than 100"),
    ],
)
def test_paths_are_relative_and_normalised(path: str, words: str) -> None:
    error = failure(base(files={path: "1"}))
    assert isinstance(error, InvalidSource)
    assert words in error.errors[0].message


@pytest.mark.parametrize("generated", ["Dockerfile", "dockerfile", "requirements.txt"])
def test_generated_files_cannot_be_supplied(generated: str) -> None:
    error = failure(base(files={generated: "FROM scratch"}))
    assert "generated" in error.errors[0].message


def test_text_only() -> None:
    assert "NUL" in failure(base(files={"a.txt": "a\x00b"})).errors[0].message
    assert "UTF-8" in failure(base(files={"a.txt": "\ud800"})).errors[0].message


def test_size_limits_name_the_setting() -> None:
    settings = Settings(max_file_bytes=10, max_total_bytes=15, max_files=3)
    error = failure(base(sourceCode="x = 12345678\n"), settings)
    assert isinstance(error, ContextTooLarge) and "BUILD_CONTEXT_MAX_FILE_BYTES" in error.message
    error = failure(
        base(sourceCode="x=1\n", files={"a.py": "y=123456\n", "b.py": "z=1234\n"}), settings
    )
    assert "BUILD_CONTEXT_MAX_TOTAL_BYTES" in error.message
    error = failure(base(files={"a.py": "", "b.py": "", "c.py": ""}), settings)
    assert "BUILD_CONTEXT_MAX_FILES" in error.message


def test_entry_file_comes_once() -> None:
    assert "sourceCode" in failure({"lambdaFunction": "x"}).message
    error = failure(base(files={"remediation.py": "1"}))
    assert "both" in error.message


def test_syntax_errors_point_at_the_file_line_and_column() -> None:
    error = failure(base(files={"pkg/mod.py": "def f(:\n"}))
    assert (error.errors[0].file, error.errors[0].line) == ("pkg/mod.py", 1)
    error = failure(base(runtime="nodejs", sourceCode="let x = 1;\nlet y = ;\n"))
    assert (error.errors[0].file, error.errors[0].line) == ("remediation.js", 2)


def test_metadata_and_ttl_limits() -> None:
    assert failure(base(metadata={"bad key": "v"})).errors[0].field == "metadata.bad key"
    assert failure(base(ttlSeconds=5)).errors[0].field == "ttlSeconds"
    assert check(base(ttlSeconds=3600)).ttl_seconds == 3600


def test_unknown_fields_and_wrong_types_name_the_field() -> None:
    assert failure(base(sourcecode="x")).errors[0].field == "sourcecode"
    assert failure(base(files=["a.py"])).errors[0].field == "files"
    assert failure([1, 2]).errors[0].field == "data"  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "source",
    [
        "type Point = tuple[float, float]\n",
        "def first[T](items: list[T]) -> T:\n    return items[0]\n",
        'label = f"{"nested quotes"}"\n',
    ],
)
def test_newer_python_syntax_is_accepted_for_newer_versions(source: str) -> None:
    assert check(base(sourceCode=source, runtimeVersion="3.13")).runtime_version == "3.13"
    error = failure(base(sourceCode="def f(:\n" + source, runtimeVersion="3.13"))
    assert isinstance(error, InvalidSource) and error.errors[0].line == 1


def test_older_versions_are_checked_with_their_own_grammar() -> None:
    error = failure(base(sourceCode="type Point = tuple[float, float]\n", runtimeVersion="3.11"))
    assert isinstance(error, InvalidSource)


@pytest.mark.parametrize(
    ("runtime", "line"),
    [
        ("go", 'var s{n} = "{text}"\n'),
        ("nodejs", 'const s{n} = "{text}";\n'),
        ("python", 's{n} = "{text}"\n'),
    ],
)
def test_chunked_parsing_reads_characters_split_across_chunks(runtime: str, line: str) -> None:
    """The parser reads the source in CHUNK_BYTES pieces; a character of 2, 3 or 4 bytes cut by
    a chunk boundary must parse exactly as when the source is read whole."""
    from function.syntax_parse import CHUNK_BYTES, new_parser, parse

    language = {"go": "go", "nodejs": "javascript", "python": "python"}[runtime]
    head = "package main\n\nfunc main() {}\n" if runtime == "go" else ""
    lines, n = [head], 0
    while sum(len(x.encode()) for x in lines) < 4 * CHUNK_BYTES:
        lines.append(line.format(n=n, text="é€😀" * (n % 7 + 1)))
        n += 1

    def splits(source: bytes) -> int:
        """Chunk boundaries that fall inside a character (on a UTF-8 continuation byte)."""
        return sum(source[k] & 0xC0 == 0x80 for k in range(CHUNK_BYTES, len(source), CHUNK_BYTES))

    # leading blank lines shift every boundary; take the first shift that cuts characters
    body = next(
        "\n" * pad + "".join(lines)
        for pad in range(16)
        if splits(("\n" * pad + "".join(lines)).encode()) >= 2
    )
    source = body.encode()

    root, _ = parse(new_parser(language), source)
    whole = new_parser(language).parse(source).root_node
    assert not root.has_error
    assert str(root) == str(whole)
    last = root.children[-1]
    text = source[last.start_byte : last.end_byte]
    assert text == source[whole.children[-1].start_byte : whole.children[-1].end_byte]
    assert "😀" in text.decode()
